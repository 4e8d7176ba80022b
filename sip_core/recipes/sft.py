"""Thinking mid-training, part 1 (method §6): SFT on chunks with interleaved `<think>` spans.

Trains on the SFT half of the integrity-gated thought rows (all tokens, thought tokens weighted
by `sft.thought_loss_weight`); reports thought-token and text-token NLL separately, before and
after, on rows of the RL half (never trained on here).
"""

from __future__ import annotations

import time

import torch

from sip_core.infra import artifacts
from sip_core.infra.artifacts import Manifest, Provenance
from sip_core.config import SipConfig
from sip_core.evaluation.nll import thought_text_nll, thought_token_masks
from sip_core.infra.run_context import RunContext
from sip_core.training import data
from sip_core.training.logprobs import pack, token_logprobs
from sip_core.training.session import TrainSession

THOUGHT_COLUMNS = ["chunk_id", "half", "augmented_text", "status"]


class NoThoughtData(ValueError):
    pass


def thought_rows(thoughts: Manifest, half: str, storage_options: dict) -> list[str]:
    rows = data.read_rows(thoughts, None, storage_options, THOUGHT_COLUMNS)
    return [t for t, h, s in zip(rows.columns.get("augmented_text", []), rows.columns.get("half", []),
                                 rows.columns.get("status", [])) if s == "ok" and h == half]


def train(cfg: SipConfig, thoughts: Manifest, provenance: Provenance = Provenance()) -> Manifest:
    sc = cfg.sft
    env = RunContext(cfg, provenance)
    so = env.storage_options
    texts = thought_rows(thoughts, "sft", so)
    if not texts:
        raise NoThoughtData(f"thought artifact {thoughts.uri} has no gated rows in its SFT half; "
                            "run `sip thoughts` with more rows or a stronger teacher")
    heldout = thought_rows(thoughts, "rl", so)[: sc.heldout_rows]
    session = TrainSession("sft", env, sc, [thoughts])
    if done := session.reused():
        return done
    env.lineage().record([thoughts])
    model, tok = session.load_policy()
    rt = session.rt
    encoded = [thought_token_masks(t, tok, True, sc.max_tokens) for t in texts]

    def nll() -> dict:
        if not heldout:
            return {}
        with rt.autocast():
            r = thought_text_nll(getattr(model, "module", model), tok, heldout, rt.device, sc.max_tokens)
        return {"heldout_thought_nll": r.thought_nll, "heldout_text_nll": r.text_nll}

    before = nll() if session.start_step == 0 else {}
    global_batch = sc.batch_size * sc.grad_accum * rt.world
    for step in session.steps():
        t = time.perf_counter()
        indices = data.step_indices(len(encoded), step, global_batch, sc.seed, rt.rank, rt.world)
        losses, parts = [], {"thought": [0.0, 0], "text": [0.0, 0]}
        for micro in range(sc.grad_accum):
            batch = [encoded[i] for i in indices[micro * sc.batch_size:(micro + 1) * sc.batch_size]]
            ids, attn, _ = pack([[] for _ in batch], [b[0] for b in batch], tok.pad_token_id, rt.device)
            thought = _mask([b[1] for b in batch], ids.shape[1], rt.device)
            text = _mask([b[2] for b in batch], ids.shape[1], rt.device)
            with session.accumulating(micro), rt.autocast():
                per_token = token_logprobs(model, ids, attn)
                weights = sc.thought_loss_weight * thought + text
                loss = -(per_token * weights).sum() / weights.sum().clamp(min=1)
                session.backward(loss)
            losses.append(float(loss.detach()))
            for name, mask in (("thought", thought), ("text", text)):
                parts[name][0] += float(-(per_token.detach() * mask).sum())
                parts[name][1] += int(mask.sum())
        metrics = {"loss": sum(losses) / len(losses),
                   "thought_nll": parts["thought"][0] / max(parts["thought"][1], 1),
                   "text_nll": parts["text"][0] / max(parts["text"][1], 1),
                   "time_update_s": round(time.perf_counter() - t, 3)}
        if step == session.start_step:
            metrics.update(before)
        if (step + 1) % sc.eval_every == 0 or step + 1 == sc.steps:
            metrics.update(nll())
        session.update(step, metrics)
    after = nll()
    return session.finish({"rows": len(texts), "heldout_rows": len(heldout),
                           **{f"before_{k}": v for k, v in before.items()},
                           **{f"after_{k}": v for k, v in after.items()}})


def _mask(masks: list[list[bool]], width: int, device) -> torch.Tensor:
    """Token masks shifted to align with next-token log-probs (position t predicts token t+1)."""
    out = torch.zeros((len(masks), width), dtype=torch.float32)
    for i, m in enumerate(masks):
        out[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
    return out[:, 1:].to(device)


def main() -> None:
    from sip_core.recipes import _cli
    from sip_core.training.runtime import shutdown

    cfg, args = _cli.parse(__doc__.splitlines()[0], ("--thoughts",))
    train(cfg, artifacts.load_manifest(args.thoughts, cfg.run.storage_options), _cli.provenance(args))
    shutdown()


if __name__ == "__main__":
    main()
