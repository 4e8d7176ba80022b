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
from sip_core.llm.types import LLMBackend, LLMRequest, LLMResult, Progress, ResultHook, role_sampling
from sip_core.infra.models import cpu_decode_threads, fast_bf16, load_causal_lm, resolve_device, resolve_model


def _fingerprint(path: str) -> str:
    """Identity of a local model folder: a new checkpoint in the same place is a new model."""
    folder = Path(path)
    if not folder.is_dir():
        return path  # a Hub id names a fixed model
    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(folder.glob("*.safetensors"))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


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
        messages = [dict(m) for m in req.messages]
        prefill = req.prefill or ""
        if prefill:
            messages = messages[:-1]  # the answer's opening is written after the generation prompt
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(m["content"] for m in messages) + "\n\n"
        return text + prefill

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

    async def agenerate(self, requests: Sequence[LLMRequest], progress: Progress | None = None,
                        on_result: ResultHook | None = None) -> list[LLMResult]:
        results: list[LLMResult | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            s = req.sampling
            groups.setdefault((s.temperature, s.top_p, s.max_tokens), []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.cfg.batch_size):
                chunk = indices[start:start + self.cfg.batch_size]
                try:
                    batch_results = self._generate_batch([requests[i] for i in chunk])
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
