"""Likelihood metrics: held-out suffix NLL, and thought-token vs text-token NLL on interleaved
`<think>...</think>` text (METHOD §6.5).

Token masks come from character offsets: a token belongs to a thought when its character span
overlaps a `<think>...</think>` span (tags included by default), to the text when it overlaps
none; tokens without characters (special tokens) belong to neither. The first token of a row is
never scored (nothing predicts it).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from sip_core.evaluation.stats import EvalResult
from sip_core.llm.thought_markup import thought_spans


class NLLResult(EvalResult):
    metric: str = "suffix_nll"
    nll: float = Field(description="token-weighted mean NLL (nats per token)")
    tokens: int = 0


def suffix_nll(model, prefix_ids: Sequence[Sequence[int]], suffix_ids: Sequence[Sequence[int]], pad_id: int,
               device="cpu", batch_size: int = 8) -> NLLResult:
    """Mean NLL of held-out suffixes given their prefixes (token-weighted over all suffixes)."""
    from sip_core.training.logprobs import batched_nll

    if len(prefix_ids) != len(suffix_ids):
        raise ValueError("one suffix per prefix")
    nll = batched_nll(model, [list(p) for p in prefix_ids], [list(s) for s in suffix_ids], pad_id, device, batch_size)
    return NLLResult(n=len(suffix_ids), nll=nll, tokens=sum(len(s) for s in suffix_ids))


def _inner_spans(text: str) -> list[tuple[int, int]]:
    return [(s + len("<think>"), e - len("</think>")) for s, e in thought_spans(text)]


def masks_from_offsets(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
                       ) -> tuple[list[bool], list[bool]]:
    """(thought, text) masks for tokens with these character offsets: thought = overlaps a span,
    text = has characters and overlaps none."""
    thought, plain = [], []
    for start, end in offsets:
        if end <= start:
            thought.append(False)
            plain.append(False)
            continue
        hit = any(start < e and end > s for s, e in spans)
        thought.append(hit)
        plain.append(not hit)
    return thought, plain


def thought_token_masks(text: str, tokenizer, include_tags: bool = True, max_tokens: int | None = None
                        ) -> tuple[list[int], list[bool], list[bool]]:
    """(token ids, thought mask, text mask) of `text` (no special tokens added; first max_tokens
    tokens). With include_tags=False the `<think>` / `</think>` tags are neither thought nor
    text when a token holds only tag characters; a token straddling a tag and thought text is
    thought. Needs a fast tokenizer (offset mapping)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if max_tokens is not None:
        ids, offsets = ids[:max_tokens], offsets[:max_tokens]
    outer = thought_spans(text)
    thought, plain = masks_from_offsets(offsets, outer)
    if not include_tags:
        inner = _inner_spans(text)
        thought = [t and any(s < e2 and e > s2 for s2, e2 in inner) for t, (s, e) in zip(thought, offsets)]
    return ids, thought, plain


class ThoughtNLLResult(EvalResult):
    metric: str = "thought_text_nll"
    thought_nll: float | None = Field(None, description="mean over rows of each row's mean thought-token NLL")
    text_nll: float | None = Field(None, description="mean over rows of each row's mean text-token NLL")
    thought_nll_tokens: float | None = Field(None, description="token-weighted thought NLL")
    text_nll_tokens: float | None = Field(None, description="token-weighted text NLL")
    thought_tokens: int = 0
    text_tokens: int = 0
    rows_without_thought: int = 0


def thought_text_nll(model, tokenizer, texts: Sequence[str], device="cpu", max_tokens: int = 1024,
                     batch_size: int = 4, include_tags: bool = True) -> ThoughtNLLResult:
    """NLL of thought tokens and of text tokens of thought-augmented rows (METHOD §6.5: rows of at
    most 1,024 tokens, mean of per-row means; token-weighted means as well)."""
    import torch

    from sip_core.training.logprobs import pack, token_logprobs

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rows = [thought_token_masks(t, tokenizer, include_tags, max_tokens) for t in texts]
    sums = {"thought": [0.0] * len(rows), "text": [0.0] * len(rows)}
    counts = {"thought": [0] * len(rows), "text": [0] * len(rows)}
    with torch.no_grad():
        for b in range(0, len(rows), batch_size):
            batch = rows[b:b + batch_size]
            ids, attn, _ = pack([[] for _ in batch], [r[0] for r in batch], pad, device)
            per_token = token_logprobs(model, ids, attn).float().cpu()  # (B, T-1): token t >= 1
            for r, (tok_ids, th, tx) in enumerate(batch):
                for name, mask in (("thought", th), ("text", tx)):
                    sel = [t for t in range(1, len(tok_ids)) if mask[t]]
                    if sel:
                        sums[name][b + r] = float(-per_token[r, [t - 1 for t in sel]].sum())
                        counts[name][b + r] = len(sel)

    def row_mean(name: str) -> float | None:
        vals = [s / c for s, c in zip(sums[name], counts[name]) if c]
        return sum(vals) / len(vals) if vals else None

    def token_mean(name: str) -> float | None:
        c = sum(counts[name])
        return sum(sums[name]) / c if c else None

    return ThoughtNLLResult(n=len(rows), thought_nll=row_mean("thought"), text_nll=row_mean("text"),
                            thought_nll_tokens=token_mean("thought"), text_nll_tokens=token_mean("text"),
                            thought_tokens=sum(counts["thought"]), text_tokens=sum(counts["text"]),
                            rows_without_thought=sum(1 for c in counts["thought"] if not c),
                            details={"max_tokens": max_tokens, "include_tags": include_tags})
