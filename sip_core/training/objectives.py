"""What pretraining optimises, picked once from `OBJECTIVES` by `pretrain.objective` (method §5).

Every objective trains on `Pairs`: prompts with the completion to raise (`chosen`) and, for a
preference objective, the one to lower (`rejected`). The losses themselves are in `losses.py`.

    dpo    - sigmoid DPO, chosen = best, rejected = worst judged candidate, vs the frozen initial policy
    rf_nll - NLL on the best judged candidate only
    ntp    - NLL on the original suffix (the next-token baseline: no rollouts, no judge)

`pretrain.pairing` says where chosen and rejected come from: the judge (best_vs_worst), or, for
the judge-free baselines, the pool by origin (dpo: rewrite over a rollout; ntp: the rewrite, or
the policy's own rollout); see `training.judged_pairs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sip_core.training.logprobs import completion_logprobs, masked_mean_nll, pair_logprobs
from sip_core.training.losses import dpo_loss


@dataclass
class Pairs:
    """One micro-batch's training examples (token ids)."""

    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)


def nll(model, pairs: Pairs, pad_id: int, device, **_) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean NLL of the chosen completions (all tokens of the micro-batch together)."""
    _, per_token, mask = completion_logprobs(model, pairs.prompts, pairs.chosen, pad_id, device)
    return masked_mean_nll(per_token, mask), {}


def dpo(model, pairs: Pairs, pad_id: int, device, reference=None, beta: float = 0.1, shared_prefix: bool = True,
        ) -> tuple[torch.Tensor, dict[str, float]]:
    """Sigmoid DPO of chosen vs rejected against the frozen reference; also its reward margin and
    accuracy (how often the chosen completion's implicit reward is the higher one). Policy and
    reference each compute a pair's prompt once (`logprobs.pair_logprobs`); `shared_prefix=False`
    runs chosen and rejected as two full sequences, as TRL does (same numbers, for comparison)."""
    chosen, rejected = pair_logprobs(model, pairs.prompts, pairs.chosen, pairs.rejected, pad_id, device,
                                     shared_prefix)
    with torch.no_grad():
        ref_chosen, ref_rejected = pair_logprobs(reference, pairs.prompts, pairs.chosen, pairs.rejected, pad_id,
                                                 device, shared_prefix)
    per_pair, chosen_reward, rejected_reward = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    return per_pair.mean(), {"dpo_margin": float((chosen_reward - rejected_reward).mean()),
                             "reward_accuracy": float((chosen_reward > rejected_reward).float().mean())}


@dataclass(frozen=True)
class Objective:
    loss: Callable[..., tuple[torch.Tensor, dict[str, float]]]
    judged: bool = True  # with pairing best_vs_worst: trains on judged candidates, else on the original suffix
    reference: bool = False  # needs a frozen copy of the initial policy
    metrics: tuple[str, ...] = ()  # what `loss` reports besides the loss, averaged per step


OBJECTIVES = {
    "dpo": Objective(dpo, reference=True, metrics=("dpo_margin", "reward_accuracy")),
    "rf_nll": Objective(nll),
    "ntp": Objective(nll, judged=False),
}
