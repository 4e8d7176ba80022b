"""Thinking mid-training, part 2 (method §7): RLMT with a judged binary reward and DrGRPO.

From a prefix the policy writes `<think>` thought `</think>` and then a predicted suffix; the
judge compares the prediction with the true suffix (0/1). G samples per prefix; advantage =
reward - group mean (no std normalisation); the summed token log-probs are divided by the fixed
generation budget (constant length normalisation). Groups whose G rewards are all equal carry no
signal; they are counted and contribute nothing.
"""

from __future__ import annotations

import time
from collections import Counter

import torch

from sip_core.infra import artifacts
from sip_core.infra.artifacts import Manifest, Provenance
from sip_core.config import SipConfig
from sip_core.llm.factory import open_llm
from sip_core.infra.run_context import RunContext
from sip_core.recipes.pretrain import _judge_identity
from sip_core.training.think_then_predict import THINK_OPEN, judge_predictions, think_then_predict
from sip_core.training import data
from sip_core.training.logprobs import completion_logprobs
from sip_core.training.losses import drgrpo_loss, group_advantages
from sip_core.training.rollout import HFRolloutEngine, step_seed
from sip_core.training.session import TrainSession


def rl_chunk_ids(thoughts: Manifest | None, storage_options: dict) -> set[str] | None:
    """The RL half of the thought data (method: data flow B); None = every train chunk."""
    if thoughts is None:
        return None
    rows = data.read_rows(thoughts, None, storage_options, ["chunk_id", "half"])
    return {c for c, h in zip(rows.columns["chunk_id"], rows.columns["half"]) if h == "rl"}


def unmask_forced(mask: torch.Tensor, prompts, samples) -> torch.Tensor:
    """Drop the close-tag tokens the sampler forced from the loss mask of `completion_logprobs`
    (column j of the mask scores token j + 1): the policy never sampled them."""
    mask = mask.clone()
    for i, (prompt, sample) in enumerate(zip(prompts, samples)):
        if sample.forced:
            a, b = sample.forced
            mask[i, len(prompt) + a - 1:len(prompt) + b - 1] = False
    return mask


def train(cfg: SipConfig, chunks: Manifest, thoughts: Manifest | None = None,
          provenance: Provenance = Provenance()) -> Manifest:
    rc = cfg.rlmt
    env = RunContext(cfg, provenance)
    so = env.storage_options
    judge = open_llm(cfg, "judge", provenance)
    parents = [chunks, *([thoughts] if thoughts else []),
               artifacts.config_manifest("judge", _judge_identity(cfg, judge.backend.model_id))]
    session = TrainSession("rlmt", env, rc, parents)
    if done := session.reused():
        return done
    env.lineage().record(parents)
    model, tok = session.load_policy()
    rt = session.rt
    rows = data.read_rows(chunks, "train", so, data.CHUNK_COLUMNS)
    keep = rl_chunk_ids(thoughts, so)
    if keep is not None:
        idx = [i for i, c in enumerate(rows.columns["chunk_id"]) if c in keep] or list(range(len(rows)))
        rows = data.Rows({k: [v[i] for i in idx] for k, v in rows.columns.items()})
    rows = data.cap_suffixes(rows, rc.predict_tokens, tok)
    engine = HFRolloutEngine(model, tok, rt.device, rc.rollout_batch, rt.dtype)
    opener = tok(THINK_OPEN, add_special_tokens=False)["input_ids"]
    budget = rc.thought_tokens + rc.predict_tokens
    global_batch = rc.batch_size * rc.grad_accum * rt.world
    for step in session.steps():
        times, stats = Counter(), Counter()
        rewards_all, losses = [], []
        calls0 = judge.calls
        indices = data.step_indices(len(rows), step, global_batch, rc.seed, rt.rank, rt.world)
        for micro in range(rc.grad_accum):
            batch = rows.take(indices[micro * rc.batch_size:(micro + 1) * rc.batch_size])
            prompts = [data.truncate_prefix(r["prefix_ids"], rc.max_prefix_tokens) + opener for r in batch]
            t = time.perf_counter()
            groups = think_then_predict(engine, tok, prompts, rc.group_size, rc.thought_tokens, rc.predict_tokens,
                                        rc.temperature, rc.top_p, step_seed(rc.seed, step, rt.rank, micro),
                                        rc.force_close)
            times["generate"] += time.perf_counter() - t
            t = time.perf_counter()
            predictions, prefixes, references = [], [], []
            for r, group in zip(batch, groups):
                for sample in group:
                    stats["forced_closes"] += sample.forced is not None
                    predictions.append(tok.decode(sample.prediction_ids, skip_special_tokens=True).strip() or None)
                    prefixes.append(r["prefix_text"])
                    references.append(r["suffix_text"])
            rewards = judge_predictions(judge, cfg.judge, prefixes, predictions, references, seed=step)
            times["judge"] += time.perf_counter() - t
            stats["format_failures"] += rewards.format_failures
            stats["invalid_judgments"] += rewards.invalid
            t = time.perf_counter()
            r_tensor = torch.tensor(rewards.values, dtype=torch.float32).view(len(batch), rc.group_size)
            rewards_all += rewards.values
            signal = (r_tensor.max(1).values - r_tensor.min(1).values) > 0
            stats["groups"] += len(batch)
            stats["no_signal_groups"] += int((~signal).sum())
            if signal.any():
                adv = group_advantages(r_tensor)[signal].flatten().to(rt.device)
                keep_rows = [p for p, s in enumerate(signal.tolist()) if s]
                sel_prompts = [prompts[p] for p in keep_rows for _ in range(rc.group_size)]
                sel_samples = [groups[p][g] for p in keep_rows for g in range(rc.group_size)]
                with session.accumulating(micro), rt.autocast():
                    _, per_token, mask = completion_logprobs(model, sel_prompts, [s.ids for s in sel_samples],
                                                             tok.pad_token_id, rt.device)
                    mask = unmask_forced(mask, sel_prompts, sel_samples)
                    loss = drgrpo_loss(per_token, mask, adv, budget)
                    session.backward(loss)
                losses.append(float(loss.detach()))
            else:
                with session.accumulating(micro):
                    session.backward_nothing()
            times["update"] += time.perf_counter() - t
        metrics = {"loss": sum(losses) / len(losses) if losses else 0.0,
                   "reward_mean": sum(rewards_all) / max(len(rewards_all), 1), **stats,
                   "judge_calls": judge.calls - calls0,
                   **{f"time_{k}_s": round(v, 3) for k, v in times.items()}}
        session.update(step, metrics)
    return session.finish({"rows": len(rows)})


def main() -> None:
    from sip_core.recipes import _cli
    from sip_core.training.runtime import shutdown

    cfg, args = _cli.parse(__doc__.splitlines()[0], ("--thoughts",))
    prov = _cli.provenance(args)
    thoughts = artifacts.load_manifest(args.thoughts, cfg.run.storage_options) if args.thoughts else None
    train(cfg, _cli.chunk_manifest(cfg, args.chunks, prov), thoughts, prov)
    shutdown()


if __name__ == "__main__":
    main()
