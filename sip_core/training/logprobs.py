"""Log-probabilities of completions given prompts, for DPO, NLL metrics and likelihood evals.

Sequences are packed right-padded as prompt + completion; only completion tokens are scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def pack(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int,
         device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, loss_mask): right padding; loss_mask marks completion tokens."""
    rows = [list(p) + list(c) for p, c in zip(prompts, completions)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    loss = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, rows)):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, : len(r)] = 1
        loss[i, len(p): len(r)] = True
    return ids.to(device), attn.to(device), loss.to(device)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log p(token_t | tokens_<t) for t >= 1, shape (B, T-1). Computed in fp32 from the logits
    (bf16 log-softmax loses the small differences DPO depends on)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, input_ids[:, 1:, None]).squeeze(2)


def completion_logprobs(model, prompts, completions, pad_id: int, device="cpu",
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed log-prob per row, per-token log-probs (B, T-1), completion mask (B, T-1))."""
    ids, attn, loss = pack(prompts, completions, pad_id, device)
    per_token = token_logprobs(model, ids, attn)
    mask = loss[:, 1:]
    return (per_token * mask).sum(-1), per_token, mask


def masked_mean_nll(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over the tokens `mask` selects (all rows together)."""
    n = mask.sum().clamp(min=1)
    return -(per_token * mask).sum() / n


@torch.no_grad()
def batched_nll(model, prompts, completions, pad_id: int, device="cpu", batch_size: int = 8) -> float:
    """Token-weighted mean NLL of completions given prompts (held-out suffix NLL)."""
    total, count = 0.0, 0
    for i in range(0, len(prompts), batch_size):
        _, per_token, mask = completion_logprobs(model, prompts[i:i + batch_size], completions[i:i + batch_size],
                                                 pad_id, device)
        total += float(-(per_token * mask).sum())
        count += int(mask.sum())
    return total / max(count, 1)
