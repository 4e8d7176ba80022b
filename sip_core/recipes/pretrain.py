"""Self-improving pretraining (method §5) and its controls, on the same data and steps.

Each step: a batch of prefixes; K policy rollouts of N tokens each; candidate set = original
suffix (+ rewrite when one exists) + rollouts; the judge scores the set (cached); then
  dpo    - sigmoid DPO, chosen = best, rejected = worst, vs the frozen initial policy;
  rf_nll - NLL on the best candidate only;
  ntp    - NLL on the original suffix (the next-token baseline: no rollouts, no judge).
Sets whose scores are all equal carry no signal and are skipped (counted).
"""

from __future__ import annotations

import time
from collections import Counter

import torch

from sip_core.infra import artifacts
from sip_core.infra.artifacts import Manifest, Provenance
from sip_core.config import SipConfig
from sip_core.augment.rewrites import rewrites_for
from sip_core.judge.scoring import Candidate, CandidateSet, score_sets
from sip_core.llm.factory import open_llm
from sip_core.infra.models import resolve_model
from sip_core.infra.run_context import RunContext
from sip_core.training import data
from sip_core.training.logprobs import batched_nll, completion_logprobs, masked_mean_nll
from sip_core.training.losses import dpo_loss
from sip_core.training.rollout import HFRolloutEngine, SamplingSpec, VLLMRolloutEngine, step_seed
from sip_core.training.session import TrainSession

ORIGINS = ("original", "rewrite", "rollout")


def _judge_identity(cfg: SipConfig, model_id: str) -> dict:
    j = cfg.judge
    return {"model_id": model_id, "criteria": j.criteria, "seeds": j.seeds, "quality_mode": j.quality_mode,
            "prefill": j.prefill, "tie_break_seed": j.tie_break_seed}


def train(cfg: SipConfig, chunks: Manifest, provenance: Provenance = Provenance()) -> Manifest:
    pc = cfg.pretrain
    env = RunContext(cfg, provenance)
    so = env.storage_options
    judge = open_llm(cfg, "judge", provenance) if pc.objective != "ntp" else None
    rewrites, rewrite_batches = rewrites_for(env, chunks) if judge and pc.use_rewrites else ({}, [])
    parents = [chunks, *rewrite_batches, artifacts.model_manifest(cfg.model.policy, resolve_model(cfg.model.policy, cfg.model.cache_dir))]
    if judge:
        parents.append(artifacts.config_manifest("judge", _judge_identity(cfg, judge.backend.model_id)))
    session = TrainSession(f"pretrain-{pc.objective}", env, pc, parents)
    if done := session.reused():
        return done
    env.lineage().record(parents)

    model, tok = session.load_policy()
    rt = session.rt
    reference = session.reference_model() if pc.objective == "dpo" else None
    n_new = pc.suffix_tokens or cfg.data.suffix_tokens
    rows = data.cap_suffixes(data.read_rows(chunks, "train", so, data.CHUNK_COLUMNS), n_new, tok)
    heldout_rows = data.cap_suffixes(data.read_rows(chunks, "heldout", so, data.CHUNK_COLUMNS), n_new, tok)
    heldout = heldout_rows.take(range(min(pc.heldout_rows, len(heldout_rows))))
    engine = None
    if pc.objective != "ntp" and pc.k_rollouts:
        engine = (VLLMRolloutEngine(resolve_model(session.init_ref()), pc.weight_sync_every)
                  if pc.rollout_engine == "vllm" else
                  HFRolloutEngine(model, tok, rt.device, pc.rollout_batch, rt.dtype))
    global_batch = pc.batch_size * pc.grad_accum * rt.world
    pad = tok.pad_token_id

    def heldout_nll() -> float:
        prompts = [data.truncate_prefix(r["prefix_ids"], pc.max_prefix_tokens) for r in heldout]
        with rt.autocast():
            return batched_nll(data_model(), prompts, [r["suffix_ids"] for r in heldout], pad, rt.device)

    def data_model():
        return getattr(model, "module", model)

    for step in session.steps():
        times = Counter()
        stats = Counter()
        losses, margins, accs = [], [], []
        calls0, hits0 = (judge.calls, judge.hits) if judge else (0, 0)
        generated0 = engine.generated_tokens if engine else 0
        if pc.rollout_engine == "vllm" and engine and step and step % pc.weight_sync_every == 0:
            times["sync"] += engine.sync(_snapshot(model, tok, session.run_dir, step), step)
        indices = data.step_indices(len(rows), step, global_batch, pc.seed, rt.rank, rt.world)
        for micro in range(pc.grad_accum):
            batch = rows.take(indices[micro * pc.batch_size:(micro + 1) * pc.batch_size])
            prompts = [data.truncate_prefix(r["prefix_ids"], pc.max_prefix_tokens) for r in batch]
            with session.accumulating(micro):
                if pc.objective == "ntp":
                    t = time.perf_counter()
                    with rt.autocast():
                        _, per_token, mask = completion_logprobs(model, prompts, [r["suffix_ids"] for r in batch],
                                                                 pad, rt.device)
                        loss = masked_mean_nll(per_token, mask)
                    session.backward(loss)
                    losses.append(float(loss.detach()))
                    times["update"] += time.perf_counter() - t
                    continue
                # 1. candidates
                t = time.perf_counter()
                spec = SamplingSpec(n_new, pc.temperature, pc.top_p, True, step_seed(pc.seed, step, rt.rank, micro))
                rollouts = engine.generate(prompts, pc.k_rollouts, spec) if engine else [[] for _ in batch]
                times["generate"] += time.perf_counter() - t
                sets, cand_ids = [], []
                for r, outs in zip(batch, rollouts):
                    cands = [("original", list(r["suffix_ids"]))]
                    if r["chunk_id"] in rewrites:
                        cands.append(("rewrite", list(rewrites[r["chunk_id"]])[:n_new]))
                    cands += [("rollout", o) for o in outs]
                    cand_ids.append(cands)
                    sets.append(CandidateSet(f"{r['chunk_id']}:{step}", r["prefix_text"],
                                             [Candidate(tok.decode(ids), origin) for origin, ids in cands],
                                             reference=r["suffix_text"]))
                # 2. judge
                t = time.perf_counter()
                scored = score_sets(judge, sets, cfg.judge)
                times["judge"] += time.perf_counter() - t
                # 3. pairs
                t = time.perf_counter()
                chosen, rejected, pair_prompts = [], [], []
                for prompt, cands, s in zip(prompts, cand_ids, scored):
                    stats["sets"] += 1
                    stats["invalid_judgments"] += s.invalid
                    if s.chosen is None:
                        stats["skipped_all_equal"] += 1
                        continue
                    stats[f"chosen_{cands[s.chosen][0]}"] += 1
                    stats[f"rejected_{cands[s.rejected][0]}"] += 1
                    pair_prompts.append(prompt)
                    chosen.append(cands[s.chosen][1])
                    rejected.append(cands[s.rejected][1])
                if not pair_prompts:
                    session.backward_nothing()
                    times["update"] += time.perf_counter() - t
                    continue
                with rt.autocast():
                    if pc.objective == "rf_nll":
                        _, per_token, mask = completion_logprobs(model, pair_prompts, chosen, pad, rt.device)
                        loss = masked_mean_nll(per_token, mask)
                    else:
                        both, _, _ = completion_logprobs(model, pair_prompts * 2, chosen + rejected, pad, rt.device)
                        with torch.no_grad():
                            ref_both, _, _ = completion_logprobs(reference, pair_prompts * 2, chosen + rejected,
                                                                 pad, rt.device)
                        n = len(pair_prompts)
                        per_pair, r_c, r_r = dpo_loss(both[:n], both[n:], ref_both[:n], ref_both[n:], pc.beta)
                        loss = per_pair.mean()
                        margins.append(float((r_c - r_r).mean()))
                        accs.append(float((r_c > r_r).float().mean()))
                session.backward(loss)
                losses.append(float(loss.detach()))
                times["update"] += time.perf_counter() - t
        metrics = {"loss": _mean(losses), **{f"time_{k}_s": round(v, 3) for k, v in times.items()}}
        if pc.objective != "ntp":
            paired = stats["sets"] - stats["skipped_all_equal"]
            metrics.update({
                "sets": stats["sets"], "skipped_all_equal": stats["skipped_all_equal"],
                "invalid_judgments": stats["invalid_judgments"],
                **{f"chosen_share_{o}": stats[f"chosen_{o}"] / paired if paired else float("nan") for o in ORIGINS},
                **{f"rejected_share_{o}": stats[f"rejected_{o}"] / paired if paired else float("nan") for o in ORIGINS},
                "judge_calls": judge.calls - calls0, "judge_cache_hits": judge.hits - hits0,
                "gen_tokens_per_s": round((engine.generated_tokens - generated0) / times["generate"], 1)
                if engine and times["generate"] else 0.0})
            if pc.objective == "dpo":
                metrics.update({"dpo_margin": _mean(margins), "reward_accuracy": _mean(accs)})
        if step == session.start_step or (step + 1) % pc.eval_every == 0 or step + 1 == pc.steps:
            metrics["heldout_nll"] = heldout_nll()
        session.update(step, metrics)
    summary = {"objective": pc.objective, "final_heldout_nll": heldout_nll()}
    return session.finish(summary)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _snapshot(model, tok, run_dir: str, step: int) -> str:
    """A local folder with the current weights, for an engine that holds its own copy (vLLM)."""
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.gettempdir()) / "sip-rollout-weights" / f"{abs(hash(run_dir))}-{step}"
    getattr(model, "module", model).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def main() -> None:
    from sip_core.recipes import _cli
    from sip_core.training.runtime import shutdown

    cfg, args = _cli.parse(__doc__.splitlines()[0])
    prov = _cli.provenance(args)
    train(cfg, _cli.chunk_manifest(cfg, args.chunks, prov), prov)
    shutdown()


if __name__ == "__main__":
    main()
