"""Losses of the recipes, written from their definitions (method §5, §7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO on summed completion log-probs. Returns per-pair (loss, chosen reward,
    rejected reward); rewards are beta * (policy - reference) log-ratios, detached."""
    logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(beta * logits)
    chosen_reward = beta * (policy_chosen - ref_chosen).detach()
    rejected_reward = beta * (policy_rejected - ref_rejected).detach()
    return losses, chosen_reward, rejected_reward


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """DrGRPO: reward minus its group mean, no division by the group's std. rewards: (P, G)."""
    return rewards - rewards.mean(dim=1, keepdim=True)


def signal_groups(rewards: list[float], failed: list[bool], group_size: int) -> tuple[torch.Tensor, list[int], dict]:
    """The groups DrGRPO learns from: (advantages of the kept groups' samples, flattened; the kept
    groups' indices; counts). `rewards` and `failed` hold P x G samples, group by group. A group
    with a failed or unparsed judgment is skipped (a failure is never a reward); one whose rewards
    are all equal carries no signal."""
    values = torch.tensor(rewards, dtype=torch.float32).view(-1, group_size)
    bad = torch.tensor(failed, dtype=torch.bool).view(-1, group_size).any(1)
    signal = ((values.max(1).values - values.min(1).values) > 0) & ~bad
    counts = {"groups": len(values), "skipped_invalid_groups": int(bad.sum()), "no_signal_groups": int((~signal).sum())}
    keep = [p for p, s in enumerate(signal.tolist()) if s]
    return group_advantages(values)[signal].flatten(), keep, counts


def drgrpo_loss(per_token_logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                norm_tokens: int) -> torch.Tensor:
    """Policy-gradient loss with DrGRPO's constant length normalisation: the sum of
    advantage-weighted token log-probs is divided by a fixed `norm_tokens` (the generation
    budget), not by each sample's length, which would favour long wrong answers.
    Samples are on-policy (one update per batch), so the importance ratio is 1 and clipping
    never binds; the gradient equals that of the clipped objective at ratio 1."""
    per_sample = (per_token_logprobs * mask).sum(-1)
    return -(advantages * per_sample).sum() / (norm_tokens * advantages.numel())
