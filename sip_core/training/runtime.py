"""Where and how a recipe runs: device, precision, torchrun/DDP, seeding, model loading."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from sip_core.infra.models import autocast_dtype, load_causal_lm, resolve_device


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
    """Read torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK) and start the process group: NCCL on
    CUDA, gloo on CPU. Device and precision settings mean what `models.resolve_device` and
    `models.autocast_dtype` say."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, autocast_dtype(precision, dev), rank, world, local_rank)


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
    """(model, tokenizer) on the runtime's device, fp32 weights (`models.load_causal_lm`)."""
    return load_causal_lm(ref, rt.device, cache_dir, trainable=trainable)


def wrap_ddp(model, rt: Runtime):
    if not rt.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
