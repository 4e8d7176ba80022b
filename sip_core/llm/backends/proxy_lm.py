"""The proxy judge's one model-based signal: a small LM's mean token log-likelihood of a
continuation given the end of its context.

Scores are memoised by text hash, and new texts are scored in batches sorted by (length, hash),
so a result never depends on the caller's order; they are rounded to 1e-4 nats so float noise
never flips a comparison.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence

from sip_core.infra.models import fast_bf16, load_causal_lm
from sip_core.llm.backends.proxy_text_stats import text_hash


def pick_lm_dtype(setting: str, device: str) -> str:
    """bf16 autocast is ~4x slower than fp32 on CPUs that emulate bf16 (e.g. AVX2 only)."""
    if setting in ("bf16", "fp32"):
        return setting
    if setting != "auto":
        raise ValueError(f"lm_dtype must be auto, bf16 or fp32, not {setting!r}")
    return "bf16" if fast_bf16(device) else "fp32"


class LikelihoodScorer:
    """A small causal LM (loaded on first use) that scores (context, continuation) pairs."""

    def __init__(self, ref: str, cache_dir: str | None, device: str, dtype: str, *, context_tokens: int,
                 option_tokens: int, batch_size: int) -> None:
        self.ref, self.cache_dir, self.device, self.dtype = ref, cache_dir, device, dtype
        self.context_tokens, self.option_tokens, self.batch_size = context_tokens, option_tokens, max(1, batch_size)
        self._lock = threading.Lock()
        self._model = self._tokenizer = None
        self._memo: dict[str, float | None] = {}

    def scores(self, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        """Mean log-likelihood (nats per token) of each continuation given the end of its
        context; None for an empty continuation."""
        keys = [text_hash(f"{ctx}\x00{cont}") for ctx, cont in pairs]
        with self._lock:
            todo = {k: p for k, p in zip(keys, pairs) if k not in self._memo}
            if todo:
                self._score_batches(self._encode(todo))
            return [self._memo[k] for k in keys]

    def _load(self) -> None:
        if self._model is not None:
            return
        self._model, self._tokenizer = load_causal_lm(self.ref, self.device, self.cache_dir)  # fp32, eval

    def _encode(self, todo: Mapping[str, tuple[str, str]]) -> list[tuple[int, str, list[int], list[int]]]:
        """(length, key, context ids, continuation ids), sorted; empty continuations are memoised as None."""
        self._load()
        tok = self._tokenizer
        items = []
        for key, (ctx, cont) in todo.items():
            ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"][-self.context_tokens:] if ctx else []
            cont_ids = tok(cont, add_special_tokens=False)["input_ids"][:self.option_tokens]
            if not cont_ids:
                self._memo[key] = None
                continue
            if not ctx_ids:  # something to condition the first token on
                start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
                ctx_ids = [start] if start is not None else []
            items.append((len(ctx_ids) + len(cont_ids), key, ctx_ids, cont_ids))
        items.sort()
        return items

    def _score_batches(self, items: list[tuple[int, str, list[int], list[int]]]) -> None:
        import torch

        tok = self._tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            width = max(n for n, *_ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (n, _, ctx_ids, cont_ids) in enumerate(batch):
                ids[row, :n] = torch.tensor(ctx_ids + cont_ids)
                mask[row, :n] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            with torch.inference_mode(), self._autocast():
                # the LM head runs only where a continuation token is predicted, not over the context
                hidden = self._model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
                for row, (n, key, ctx_ids, _) in enumerate(batch):
                    first = len(ctx_ids)
                    logits = self._model.get_output_embeddings()(hidden[row, first - 1:n - 1]).float()
                    picked = torch.log_softmax(logits, dim=-1).gather(-1, ids[row, first:n, None]).squeeze(-1)
                    # rounded so float noise below the 4th decimal never flips a comparison
                    self._memo[key] = round(float(picked.mean()), 4)

    def _autocast(self):
        import torch

        if self.dtype != "bf16":
            return contextlib.nullcontext()
        return torch.autocast("cuda" if str(self.device).startswith("cuda") else "cpu", dtype=torch.bfloat16)
