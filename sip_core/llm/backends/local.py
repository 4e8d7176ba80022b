"""An in-process transformers model, batched: the embedded default for rewriting and thoughts.

Requests are grouped by sampling parameters and generated `batch_size` at a time with left
padding. Sampling is seeded per batch from the requests' seeds, so the same requests in the same
batches give the same text; greedy decoding (temperature 0) is exact regardless.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

from sip_core.config import LLMConfig
from sip_core.llm.types import (LLMBackend, LLMRequest, LLMResult, Progress, ResultHook, choice_answer,
                                role_sampling)
from sip_core.infra.models import cpu_decode_threads, fast_bf16, load_causal_lm, resolve_device, resolve_model


def _fingerprint(path: str) -> str:
    """Identity of a local model folder: a new checkpoint in the same place is a new model."""
    folder = Path(path)
    if not folder.is_dir():
        return path  # a Hub id names a fixed model
    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(folder.glob("*.safetensors"))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def prompt_text(tokenizer, req: LLMRequest) -> str:
    """The text a local model reads for `req`: its chat template with the generation prompt, then
    the prefilled answer opening. Training a model that is later served here (a rewriter) renders
    its prompts with this too, so it is trained on exactly what it will read."""
    messages = [dict(m) for m in req.messages]
    prefill = req.prefill or ""
    if prefill:
        messages = messages[:-1]  # the answer's opening is written after the generation prompt
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n\n".join(m["content"] for m in messages) + "\n\n"
    return text + prefill


class LocalHFBackend(LLMBackend):
    kind = "local"

    def __init__(self, cfg: LLMConfig):
        import torch

        self.cfg = cfg
        path = resolve_model(cfg.model)
        self.device = resolve_device(cfg.device)
        dtype = torch.bfloat16 if fast_bf16(str(self.device)) else torch.float32
        # numerics differ by dtype, so answers may too
        self.model_id = f"local:{cfg.model}:{_fingerprint(path)}:{str(dtype).removeprefix('torch.')}"
        self.model, self.tokenizer = load_causal_lm(path, self.device, dtype=dtype, padding_side="left")

    def _prompt_text(self, req: LLMRequest) -> str:
        return prompt_text(self.tokenizer, req)

    def _generate_batch(self, batch: list[LLMRequest]) -> list[LLMResult]:
        import torch

        s = batch[0].sampling.override(role_sampling(self.cfg))
        temperature, top_p, max_tokens = s.temperature, s.top_p, s.max_tokens
        started = time.perf_counter()
        enc = self.tokenizer([self._prompt_text(r) for r in batch], return_tensors="pt", padding=True,
                             add_special_tokens=False).to(self.device)
        seed = int(hashlib.sha256(repr([r.sampling.seed for r in batch]).encode()).hexdigest()[:8], 16)
        torch.manual_seed(seed)
        kwargs = dict(do_sample=temperature > 0, max_new_tokens=max_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=top_p)
        with torch.inference_mode(), cpu_decode_threads(self.device) as processors:
            out = self.model.generate(**enc, logits_processor=processors, **kwargs)
        new = out[:, enc["input_ids"].shape[1]:]
        latency = (time.perf_counter() - started) / len(batch)
        results = []
        for i, req in enumerate(batch):
            ids = [t for t in new[i].tolist() if t != self.tokenizer.pad_token_id]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            for stop in req.sampling.stop:
                text = text.split(stop, 1)[0]
            text = (req.prefill or "") + text
            results.append(LLMResult(text=text, prompt_tokens=int(enc["attention_mask"][i].sum()),
                                     completion_tokens=len(ids), latency_s=latency))
        return results

    def choice_tokens(self, choices) -> tuple[list[int], dict[str, int]] | str:
        """(shared leading tokens, each label's first own token) of probs-verdict choices, or why
        this tokenizer cannot tell them apart ("1" and "2" may both start with a space token)."""
        ids = {label: self.tokenizer(text, add_special_tokens=False)["input_ids"] for label, text in choices}
        common: list[int] = []
        for column in zip(*ids.values()):
            if len(set(column)) > 1:
                break
            common.append(column[0])
        first = {label: seq[len(common)] for label, seq in ids.items() if len(seq) > len(common)}
        if len(first) < len(ids) or len(set(first.values())) < len(first):
            shown = ", ".join(f"{label!r}->{self.tokenizer.convert_ids_to_tokens(seq)}" for label, seq in ids.items())
            return f"the tokenizer of {self.cfg.model} cannot tell the verdict options apart ({shown})"
        return common, first

    def _choose_batch(self, batch: list[LLMRequest]) -> list[LLMResult]:
        """Probs verdicts: one forward pass, each option's log-probability at the answer position."""
        import torch

        plans = [self.choice_tokens(r.choices) for r in batch]
        if bad := next((p for p in plans if isinstance(p, str)), None):
            return [LLMResult(text=None, error=bad) for _ in batch]
        seqs = [self.tokenizer(self._prompt_text(r), add_special_tokens=False)["input_ids"] + common
                for r, (common, _) in zip(batch, plans)]
        width, pad = max(map(len, seqs)), self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(q)) + q for q in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in seqs], device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask,
                                position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        results = []
        for i, (req, (_, first), seq) in enumerate(zip(batch, plans, seqs)):
            results.append(choice_answer(req, {label: float(logprobs[i, tok]) for label, tok in first.items()}))
            results[-1].prompt_tokens = len(seq)
        return results

    async def agenerate(self, requests: Sequence[LLMRequest], progress: Progress | None = None,
                        on_result: ResultHook | None = None) -> list[LLMResult]:
        results: list[LLMResult | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            s = req.sampling
            groups.setdefault((bool(req.choices), s.temperature, s.top_p, s.max_tokens), []).append(i)
        for key, indices in groups.items():
            run_batch = self._choose_batch if key[0] else self._generate_batch
            for start in range(0, len(indices), self.cfg.batch_size):
                chunk = indices[start:start + self.cfg.batch_size]
                try:
                    batch_results = run_batch([requests[i] for i in chunk])
                except (RuntimeError, ValueError) as exc:  # e.g. out of memory: record, don't lose the batch
                    batch_results = [LLMResult(text=None, error=f"local generate failed: {exc}".splitlines()[0])
                                     for _ in chunk]
                for i, res in zip(chunk, batch_results):
                    results[i] = res
                    if on_result:
                        on_result(i, res)
                if progress:
                    progress(len(chunk))
        return results  # type: ignore[return-value]
