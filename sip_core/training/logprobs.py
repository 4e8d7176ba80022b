"""Log-probabilities of completions given prompts, for DPO, NLL metrics and likelihood evals.

Sequences are packed right-padded as prompt + completion; only completion tokens are scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


# --------------------------------------------------------------------------- shared-prefix pairs
# DPO scores two completions of one prompt. Run as two sequences (TRL's design), the prompt is
# computed twice by the policy and twice by the reference; at the paper's shapes (1,920 prefix
# tokens, 128-token candidates) that is most of the step. Here each pair is one packed row
# [left pad | prompt | chosen | rejected] with a block attention mask: the rejected tokens see the
# prompt but not the chosen ones, and continue the prompt's positions. The prompt is computed once
# (so its gradient is accumulated once from both completions), and logits are projected onto the
# vocabulary only where a completion token is predicted.

# attention implementations that take a custom 4D mask (flash-attention kernels do not)
_MASKABLE = {"sdpa": torch.bool, "eager": torch.float32}


def shared_prefix_supported(model, prompts: Sequence[Sequence[int]]) -> bool:
    """Whether `model` takes the packed layout: a custom-mask attention, and every prompt has a
    token to predict the completions' first tokens from."""
    config = getattr(getattr(model, "module", model), "config", None)
    return getattr(config, "_attn_implementation", None) in _MASKABLE and all(len(p) for p in prompts)


@dataclass
class SharedPrefixBatch:
    input_ids: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    attention: torch.Tensor  # (B, 1, T, T), True = may attend
    keep: torch.Tensor  # (K,) columns whose logits predict a completion token
    targets: torch.Tensor  # (B, K) the tokens they predict
    target_mask: torch.Tensor  # (B, K) real (not padding) targets
    n_chosen: int  # the first n_chosen of K are the chosen completion's tokens


def pack_shared_prefix(prompts, chosen, rejected, pad_id: int, device="cpu") -> SharedPrefixBatch:
    """Rows [left pad | prompt | chosen, right-padded | rejected, right-padded]; every prompt ends
    at column P, so the columns to score are the same in every row."""
    p_w, c_w, r_w = (max((len(x) for x in xs), default=0) for xs in (prompts, chosen, rejected))
    width, start_r = p_w + c_w + r_w, p_w + c_w
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(prompts), width), dtype=torch.long)
    real = torch.zeros((len(prompts), width), dtype=torch.bool)
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected)):
        for start, toks, first_pos in ((p_w - len(p), p, 0), (p_w, c, len(p)), (start_r, r, len(p))):
            ids[i, start:start + len(toks)] = torch.tensor(list(toks), dtype=torch.long)
            pos[i, start:start + len(toks)] = torch.arange(first_pos, first_pos + len(toks))
            real[i, start:start + len(toks)] = True
    col = torch.arange(width)
    causal = col[None, :] <= col[:, None]  # (query, key)
    in_chosen = (col >= p_w) & (col < start_r)
    blocked = (col[:, None] >= start_r) & in_chosen[None, :]  # rejected queries never see chosen keys
    allowed = (causal & ~blocked)[None] & real[:, None, :]
    allowed |= torch.eye(width, dtype=torch.bool)[None]  # a padding query attends to itself: no empty softmax row
    keep_c = [p_w - 1] + list(range(p_w, p_w + c_w - 1)) if c_w else []
    keep_r = [p_w - 1] + list(range(start_r, start_r + r_w - 1)) if r_w else []
    targets = ids[:, p_w:]  # chosen block then rejected block: exactly the predicted columns
    lengths = [[len(c), len(r)] for c, r in zip(chosen, rejected)]
    k = torch.arange(max(c_w, r_w))
    mask = torch.cat([k[None, :c_w] < torch.tensor([l[0] for l in lengths])[:, None],
                      k[None, :r_w] < torch.tensor([l[1] for l in lengths])[:, None]], dim=1)
    return SharedPrefixBatch(ids.to(device), pos.to(device), allowed[:, None].to(device),
                             torch.tensor(keep_c + keep_r, dtype=torch.long, device=device), targets.to(device),
                             mask.to(device), c_w)


def shared_prefix_pair_logprobs(model, prompts, chosen, rejected, pad_id: int, device="cpu",
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each pair's chosen and rejected completion, the prompt computed once."""
    batch = pack_shared_prefix(prompts, chosen, rejected, pad_id, device)
    impl = getattr(model, "module", model).config._attn_implementation
    mask = batch.attention
    if _MASKABLE[impl] is not torch.bool:  # eager adds the mask to the scores
        mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(
            ~mask, torch.finfo(torch.float32).min)
    logits = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                   use_cache=False, logits_to_keep=batch.keep).logits.float()
    picked = torch.gather(logits, 2, batch.targets[:, :, None]).squeeze(2) - torch.logsumexp(logits, dim=-1)
    picked = picked * batch.target_mask
    n = batch.n_chosen
    return picked[:, :n].sum(-1), picked[:, n:].sum(-1)


def pair_logprobs(model, prompts, chosen, rejected, pad_id: int, device="cpu", shared_prefix: bool = True,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed completion log-probs: shared-prefix packing where the model takes
    it, else chosen and rejected as two full sequences each (the same numbers, more compute)."""
    if shared_prefix and shared_prefix_supported(model, prompts):
        return shared_prefix_pair_logprobs(model, prompts, chosen, rejected, pad_id, device)
    both, _, _ = completion_logprobs(model, list(prompts) * 2, list(chosen) + list(rejected), pad_id, device)
    return both[:len(prompts)], both[len(prompts):]
