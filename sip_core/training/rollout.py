"""Rollout engines: one interface, two implementations.

- `HFRolloutEngine`: transformers `generate` on the training model itself (CPU or GPU), left
  padding, so rollouts always come from the current weights. The K rollouts of a prefix share
  one prefill and decode as one batch.
- `VLLMRolloutEngine`: vLLM's offline `LLM` (GPU clusters); its prefix cache serves the K
  rollouts' shared prefix. It holds its own copy of the weights,
  so it is re-synced by reloading the latest saved checkpoint every `sync_every` steps (policy
  lag <= sync_every steps); each reload's seconds are returned by `sync()` and logged.
"""

from __future__ import annotations

import abc
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sip_core.infra.models import cpu_decode_threads


@dataclass(frozen=True)
class SamplingSpec:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    exact_length: bool = True  # suppress EOS until max_new_tokens: suffixes are exactly N tokens
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def step_seed(*parts) -> int:
    """A seed derived from (run seed, step, ...): resumed runs redraw the same samples."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


class RolloutEngine(abc.ABC):
    @abc.abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], n: int, spec: SamplingSpec) -> list[list[list[int]]]:
        """For each prompt, n completions as token-id lists (EOS and padding removed)."""

    def sync(self, checkpoint_dir: str | None, step: int) -> float:
        """Bring the engine's weights up to date; returns seconds spent (0 when shared)."""
        return 0.0


class HFRolloutEngine(RolloutEngine):
    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", batch_size: int = 16,
                 autocast_dtype: torch.dtype | None = None, decode_threads: int | None = 1,
                 share_prefill: bool = True):
        """`decode_threads`: torch threads for the token-by-token steps on a CPU (see
        `models.cpu_decode_threads`); None keeps torch's count throughout. `share_prefill`: a
        prompt repeated in a batch (the K rollouts of a prefix) is prefilled once (False: once per
        row, as plain generate does; for comparison). `autocast_dtype` applies on CUDA; a CPU
        decodes in fp32 (below)."""
        self.model, self.tokenizer, self.device = model, tokenizer, torch.device(device)
        # On a CPU, autocast re-casts every weight at every op, and token-by-token decoding is all
        # small ops: K=16 rollouts of 32 tokens from a 480-token prefix took 18-19 s under bf16
        # autocast vs 10-12 s in fp32 (AVX512-BF16, benchmarks/bench_train.py), and fp32 was never
        # slower at the tiny shapes. Autocast stays where it pays: CUDA.
        if self.device.type == "cpu":
            autocast_dtype = None
        self.batch_size, self.autocast_dtype, self.decode_threads = batch_size, autocast_dtype, decode_threads
        self.share_prefill = share_prefill
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.generated_tokens = 0

    def _left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
                attn[i, width - len(r):] = 1
        return ids.to(self.device), attn.to(self.device)

    def _strip(self, row: list[int], spec: SamplingSpec) -> list[int]:
        eos = self.tokenizer.eos_token_id
        if not spec.exact_length and eos in row:
            row = row[: row.index(eos)]
        return row

    def _generate_kwargs(self, spec: SamplingSpec) -> dict:
        kwargs = dict(max_new_tokens=spec.max_new_tokens, pad_token_id=self.pad_id)
        if spec.exact_length:
            kwargs["min_new_tokens"] = spec.max_new_tokens
        if spec.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=spec.temperature, top_p=spec.top_p, top_k=0)
        return kwargs

    def _shared_prefill(self, module, rows: list[list[int]], ids: torch.Tensor, attn: torch.Tensor):
        """The KV cache of all but the last prompt column, computed once per distinct prompt of the
        batch and repeated for its rows (None when no prompt repeats: nothing to share). generate()
        then starts from it: the K rollouts of a prefix pay one prefill, not K."""
        distinct = {tuple(r): i for i, r in reversed(list(enumerate(rows)))}  # prompt -> its first row
        if len(distinct) == len(rows) or ids.shape[1] < 2:
            return None
        first = torch.tensor(list(distinct.values()), device=ids.device)
        mask = attn[first, :-1]
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate() numbers left-padded rows
        cache = module(input_ids=ids[first, :-1], attention_mask=mask, position_ids=positions, use_cache=True).cache
        slot = {key: j for j, key in enumerate(distinct)}
        cache.batch_select_indices(torch.tensor([slot[tuple(r)] for r in rows], device=ids.device))
        return cache

    @torch.no_grad()
    def generate(self, prompts, n, spec):
        module = getattr(self.model, "module", self.model)  # unwrap DDP
        was_training = module.training
        module.eval()
        flat = [list(p) for p in prompts for _ in range(n)]
        out: list[list[int]] = []
        gen = torch.Generator(device="cpu").manual_seed(spec.seed)
        kwargs = self._generate_kwargs(spec)
        for i in range(0, len(flat), self.batch_size):
            rows = flat[i:i + self.batch_size]
            ids, attn = self._left_pad(rows)
            # generate() draws from the global RNG: seed it per batch from our own generator so a
            # resumed run, or another batch size of other runs, does not change these samples.
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            ctx = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                   else torch.autocast(self.device.type, enabled=False))
            with ctx:
                cache = self._shared_prefill(module, rows, ids, attn) if self.share_prefill else None
                with cpu_decode_threads(self.device, self.decode_threads) as processors:
                    seqs = module.generate(input_ids=ids, attention_mask=attn, logits_processor=processors,
                                           cache=cache, **kwargs)
            for row in seqs[:, ids.shape[1]:].tolist():
                out.append(self._strip(row, spec))
        self.generated_tokens += sum(len(r) for r in out)
        if was_training:
            module.train()
        return [out[k * n:(k + 1) * n] for k in range(len(prompts))]


class VLLMRolloutEngine(RolloutEngine):
    """vLLM offline engine; weight-sync policy: reload from the newest checkpoint every M steps."""

    def __init__(self, model_dir: str, sync_every: int = 10, gpu_memory_utilization: float = 0.3,
                 dtype: str = "bfloat16"):
        from vllm import LLM  # noqa: F401  (fail early with ImportError when vLLM is absent)

        self.sync_every, self.gpu_memory_utilization, self.dtype = sync_every, gpu_memory_utilization, dtype
        self.model_dir, self.llm, self.generated_tokens = model_dir, None, 0
        self._load(model_dir)

    def _load(self, model_dir: str) -> None:
        from vllm import LLM

        self.llm = None  # free the old engine first
        # prefix caching: the K rollouts of a prefix (and the next step's repeats of it) prefill it once
        self.llm = LLM(model=model_dir, dtype=self.dtype, gpu_memory_utilization=self.gpu_memory_utilization,
                       enforce_eager=True, enable_prefix_caching=True)
        self.model_dir = model_dir

    def sync(self, checkpoint_dir, step):
        if checkpoint_dir is None or checkpoint_dir == self.model_dir or step % self.sync_every:
            return 0.0
        start = time.perf_counter()
        self._load(checkpoint_dir)
        return time.perf_counter() - start

    def generate(self, prompts, n, spec):
        from vllm import SamplingParams

        params = SamplingParams(n=n, max_tokens=spec.max_new_tokens, seed=spec.seed,
                                min_tokens=spec.max_new_tokens if spec.exact_length else 0,
                                temperature=max(spec.temperature, 0.0), top_p=spec.top_p)
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        result = [[list(c.token_ids) for c in o.outputs] for o in outs]
        self.generated_tokens += sum(len(c) for r in result for c in r)
        return result


def snapshot_weights(model, tokenizer, run_dir: str, step: int) -> str:
    """A local folder with the current weights, for an engine that holds its own copy (vLLM)."""
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.gettempdir()) / "sip-rollout-weights" / f"{abs(hash(run_dir))}-{step}"
    getattr(model, "module", model).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
