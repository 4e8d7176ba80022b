"""Where and how a recipe runs: device, precision, torchrun/DDP, seeding, model loading."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from sip_core.infra.models import fast_bf16, resolve_model


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None = full fp32
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_mean(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world


def setup(device: str = "auto", precision: str = "auto") -> Runtime:
    """Read torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK) and start the process group:
    NCCL on CUDA, gloo on CPU. precision auto = bf16 autocast where bf16 is native (CUDA,
    AMX/AVX512-BF16 CPUs), fp32 elsewhere (emulated bf16 is ~4x slower on AVX2 CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(f"cuda:{local_rank}" if device == "cuda" else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if precision == "auto":
        precision = "bf16" if fast_bf16(dev.type) else "fp32"
    dtype = torch.bfloat16 if precision == "bf16" else None
    return Runtime(dev, dtype, rank, world, local_rank)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model(ref: str, rt: Runtime, cache_dir: str | None = None, trainable: bool = True):
    """(model, tokenizer) from a model reference; weights stay fp32 (autocast does the bf16 math,
    the optimizer keeps fp32 master weights)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(ref, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(rt.device)
    model.train(trainable)
    if not trainable:
        model.requires_grad_(False)
    return model, tokenizer


def wrap_ddp(model, rt: Runtime):
    if not rt.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)


def unwrap(model):
    return getattr(model, "module", model)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
