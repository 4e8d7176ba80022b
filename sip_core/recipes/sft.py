"""Thinking mid-training, part 1 (method §6): SFT on chunks with interleaved `<think>` spans.

Trains on the SFT half of the integrity-gated thought rows (all tokens, thought tokens weighted
by `sft.thought_loss_weight`); reports thought-token and text-token NLL separately, before and
after, on rows of the RL half (never trained on here).
"""

from __future__ import annotations


import torch

from sip_core.config import SipConfig
from sip_core.evaluation.nll import thought_text_nll, thought_token_masks
from sip_core.infra.artifacts import Manifest, Provenance
from sip_core.infra.run_context import RunContext
from sip_core.recipes import _cli
from sip_core.training.data import NoThoughtData, thought_rows
from sip_core.training.logprobs import pack, token_logprobs
from sip_core.training.recipe import Recipe, Timers

__all__ = ["NoThoughtData", "Sft", "train"]


class Sft(Recipe):
    section_key = "sft"

    def __init__(self, cfg: SipConfig, thoughts: Manifest, provenance: Provenance = Provenance()):
        sc, env = cfg.sft, RunContext(cfg, provenance)
        if thoughts.config.get("split", "train") != "train":  # held-out thoughts are for evaluation only
            raise NoThoughtData(f"thought artifact {thoughts.uri} was made from the {thoughts.config['split']} "
                                "split; thinking SFT trains on thoughts of train chunks")
        self.texts = thought_rows(thoughts, "sft", env.storage_options)
        if not self.texts:
            raise NoThoughtData(f"thought artifact {thoughts.uri} has no gated rows in its SFT half; "
                                "run `sip thoughts` with more rows or a stronger teacher")
        self.heldout = thought_rows(thoughts, "rl", env.storage_options)[: sc.heldout_rows]
        super().__init__("sft", env, sc, [thoughts])

    def setup(self) -> None:
        self.encoded = [thought_token_masks(t, self.tok, True, self.tc.max_tokens) for t in self.texts]
        self.before = self.heldout_nll() if self.session.start_step == 0 else {}

    def train_step(self, step: int) -> dict:
        sc, rt, timers = self.tc, self.rt, Timers()
        losses, parts = [], {"thought": [0.0, 0], "text": [0.0, 0]}
        with timers("update"):
            for micro, indices in self.session.micro_batches(len(self.encoded), step):
                batch = [self.encoded[i] for i in indices]
                ids, attn, _ = pack([[] for _ in batch], [b[0] for b in batch], self.tok.pad_token_id, rt.device)
                thought = _mask([b[1] for b in batch], ids.shape[1], rt.device)
                text = _mask([b[2] for b in batch], ids.shape[1], rt.device)
                with self.session.accumulating(micro), rt.autocast():
                    per_token = token_logprobs(self.model, ids, attn)
                    weights = sc.thought_loss_weight * thought + text
                    loss = -(per_token * weights).sum() / weights.sum().clamp(min=1)
                    self.session.backward(loss)
                losses.append(float(loss.detach()))
                for name, mask in (("thought", thought), ("text", text)):
                    parts[name][0] += float(-(per_token.detach() * mask).sum())
                    parts[name][1] += int(mask.sum())
        return {"loss": sum(losses) / len(losses),
                "thought_nll": parts["thought"][0] / max(parts["thought"][1], 1),
                "text_nll": parts["text"][0] / max(parts["text"][1], 1), **timers.metrics()}

    def heldout_nll(self) -> dict:
        if not self.heldout:
            return {}
        with self.rt.autocast():
            r = thought_text_nll(self.session.module, self.tok, self.heldout, self.rt.device, self.tc.max_tokens)
        return {"heldout_thought_nll": r.thought_nll, "heldout_text_nll": r.text_nll}

    def evaluate(self, step: int) -> dict:
        sc = self.tc
        out = dict(self.before) if step == self.session.start_step else {}
        if (step + 1) % sc.eval_every == 0 or step + 1 == sc.steps:
            out.update(self.heldout_nll())
        return out

    def summary(self) -> dict:
        after = self.heldout_nll()
        return {"rows": len(self.texts), "heldout_rows": len(self.heldout),
                **{f"before_{k}": v for k, v in self.before.items()},
                **{f"after_{k}": v for k, v in after.items()}}


def _mask(masks: list[list[bool]], width: int, device) -> torch.Tensor:
    """Token masks shifted to align with next-token log-probs (position t predicts token t+1)."""
    out = torch.zeros((len(masks), width), dtype=torch.float32)
    for i, m in enumerate(masks):
        out[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
    return out[:, 1:].to(device)


def train(cfg: SipConfig, thoughts: Manifest, provenance: Provenance = Provenance()) -> Manifest:
    return Sft(cfg, thoughts, provenance).run()


def main() -> None:
    _cli.main(__doc__, lambda cfg, inputs, prov: train(cfg, inputs["thoughts"], prov), required=("thoughts",),
              user_errors=(NoThoughtData,), name="sft")


if __name__ == "__main__":
    main()
