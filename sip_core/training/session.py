"""What every recipe's loop shares: run folder, resume, optimizer and schedule, the step's
micro-batches, gradient accumulation, metrics, checkpoints with lineage. `training.recipe.Recipe`
drives it; recipes keep only their method's own logic.

    session = TrainSession("pretrain-dpo", env, cfg.pretrain, parents, "pretrain")
    model, tokenizer = session.load_policy()
    for step in session.steps():
        for micro, rows in session.micro_batches(n_rows, step):
            with session.accumulating(micro):
                loss = ...; session.backward(loss)
        session.log(step, {"loss": ...}, session.optimizer_step())
        session.checkpoint_if_due(step)
    return session.finish()
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
import warnings
from typing import Any

import pyarrow as pa
import torch

from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import Manifest
from sip_core.config import TrainConfig
from sip_core.infra.run_context import RunContext
from sip_core.training import checkpoint, data, runtime
from sip_core.training.runtime import Runtime

# What is kept on disk does not change the model, so it is not part of the run folder's key.
BOOKKEEPING = {"keep_checkpoints", "keep_after_finish", "max_invalid_share"}


class TrainingStopped(RuntimeError):
    """A run whose work failed (too many skipped judgments, or no optimizer update at all):
    it commits no final/, so a rerun trains for real instead of reusing an untrained model."""


def run_key(env: RunContext, recipe: str, section: TrainConfig, parents: list[Manifest]) -> dict[str, Any]:
    """What a run folder is keyed on: same recipe, config and parents -> same folder, so a killed
    run resumes and a finished one is reused."""
    cfg = env.cfg
    # allow_no_update changes what may be committed, not the model: keyed only when set, so a default
    # run keeps its folder and never reuses the untrained final/ that an allowing run committed.
    exclude = BOOKKEEPING if section.allow_no_update else BOOKKEEPING | {"allow_no_update"}
    return {"recipe": recipe, "train": section.model_dump(mode="json", exclude=exclude),
            "data": cfg.data.model_dump(mode="json"), "policy": cfg.model.policy,
            "parents": [p.content_hash for p in parents]}


def lr_multiplier(step: int, tc: TrainConfig) -> float:
    """The factor on `tc.lr` at optimizer step `step` (0-based): linear warmup to 1 over
    `warmup_steps`, then constant, or a cosine from 1 at the end of warmup down to `min_lr_ratio`
    at the last step (METHOD §5.1: cosine, min ratio 0.1, warmup)."""
    warmup = tc.warmup_steps
    if warmup and step < warmup - 1:
        return (step + 1) / warmup
    if tc.lr_schedule == "constant":
        return 1.0
    peak = max(warmup - 1, 0)
    progress = min(1.0, max(0.0, (step - peak) / max(1, tc.steps - 1 - peak)))
    return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class TrainSession:
    def __init__(self, recipe: str, env: RunContext, tc: TrainConfig, parents: list[Manifest], section_key: str):
        """`section_key`: the config section `tc` is (`pretrain`, `rlmt`, ...), for the keys a stop names."""
        self.recipe, self.env, self.cfg, self.tc, self.parents = recipe, env, env.cfg, tc, parents
        self.section_key = section_key
        self.so = env.storage_options
        self.run_dir = env.train_uri(recipe, run_key(env, recipe, tc, parents))
        self.rt: Runtime = runtime.setup(tc.device, tc.precision)
        runtime.seed_everything(tc.seed + self.rt.rank)
        self.metrics: list[dict[str, Any]] = []
        self.start_step = 0
        self._signal = False  # a backward with training signal since the last optimizer step
        self.updated = False  # whether the last optimizer step changed the model
        self.final = artifacts.load_committed(store.join(self.run_dir, "final"), self.so)
        self._t0 = time.perf_counter()

    def reused(self) -> Manifest | None:
        """The finished run's final checkpoint (announced), or None when there is work to do."""
        if self.final is not None:
            self.emit({"event": "reused", "final": self.final.uri})
        return self.final

    # ---------------------------------------------------------------- model and resume
    def load_policy(self):
        """(model, tokenizer) from the newest committed checkpoint of this run, else from the
        recipe's init; optimizer, schedule, RNG and metrics come back with a checkpoint."""
        steps = checkpoint.committed_steps(self.run_dir, self.so)
        source = checkpoint.step_dir(self.run_dir, steps[-1]) if steps else None
        ref = checkpoint.local_copy(source, self.so) if source else self.init_ref()
        model, tokenizer = runtime.load_model(ref, self.rt, self.cfg.model.cache_dir)
        self.module, self.tokenizer = model, tokenizer  # module: the model itself, DDP wrapper or not
        self.model = runtime.wrap_ddp(model, self.rt)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.tc.lr, weight_decay=self.tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_multiplier(s, self.tc))
        if source:
            state = checkpoint.load_state(source, self.so)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            runtime.set_rng_state(state["rng"][min(self.rt.rank, len(state["rng"]) - 1)])
            self.metrics, self.start_step = state["metrics"], state["step"]
            self.emit({"event": "resumed", "from": source, "step": self.start_step})
        return self.model, tokenizer

    def init_ref(self) -> str:
        init = self.tc.init or self.cfg.model.policy
        if store.is_remote(init) or artifacts.load_committed(init, self.so):
            return checkpoint.local_copy(init, self.so)
        return init

    def reference_model(self):
        """A frozen copy of the initial policy (DPO's reference), never trained."""
        model, _ = runtime.load_model(self.init_ref(), self.rt, self.cfg.model.cache_dir, trainable=False)
        return model

    # ---------------------------------------------------------------- loop pieces
    def steps(self):
        return range(self.start_step, self.tc.steps)

    def micro_batches(self, n_rows: int, step: int):
        """(micro, row indices) for each micro-batch of this rank at optimizer step `step`."""
        tc, rt = self.tc, self.rt
        global_batch = tc.batch_size * tc.grad_accum * rt.world
        indices = data.step_indices(n_rows, step, global_batch, tc.seed, rt.rank, rt.world)
        for micro in range(tc.grad_accum):
            yield micro, indices[micro * tc.batch_size:(micro + 1) * tc.batch_size]

    def accumulating(self, micro: int):
        """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
        last = micro == self.tc.grad_accum - 1
        if self.rt.distributed and not last:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.tc.grad_accum).backward()
        self._signal = True

    def backward_nothing(self) -> None:
        """A micro-batch with no training signal. Under DDP every rank must still join the
        gradient all-reduce, so it runs a zero-weighted forward/backward; alone it does nothing."""
        if not self.rt.distributed:
            return
        ids = torch.full((1, 2), self.tokenizer.pad_token_id, dtype=torch.long, device=self.rt.device)
        self.backward(self.model(input_ids=ids).logits.sum() * 0.0)

    def optimizer_step(self) -> float:
        """Clip, step optimizer and schedule; returns the gradient norm before clipping. A step in
        which no rank had a training signal updates nothing (`updated` false in its metrics row):
        zero gradients would still move AdamW's moments, and such a step is not training."""
        self.updated = self.rt.all_mean(1.0 if self._signal else 0.0) > 0
        self._signal = False
        grad_norm = 0.0
        if self.updated:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.max_grad_norm))
            self.optimizer.step()
        with warnings.catch_warnings():  # the schedule counts steps, updated or not (torch warns on that)
            warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before"))
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    @property
    def updates(self) -> int:
        """Optimizer steps of this run that changed the model (resumed ones included)."""
        return sum(1 for r in self.metrics if r.get("updated", True))

    def log(self, step: int, metrics: dict[str, Any], grad_norm: float) -> None:
        """The step's metrics row (floats averaged over ranks), kept and emitted."""
        row = {"step": step + 1, **{k: self.rt.all_mean(v) if isinstance(v, float) else v for k, v in metrics.items()},
               "grad_norm": grad_norm, "updated": self.updated, "lr": self.scheduler.get_last_lr()[0],
               "elapsed_s": round(time.perf_counter() - self._t0, 2)}
        self.metrics.append(row)
        self.emit({**row, "of": self.tc.steps})  # "of": for the console's "step i/N" and ETA

    def checkpoint_if_due(self, step: int) -> None:
        if (step + 1) % self.tc.checkpoint_every == 0 and step + 1 < self.tc.steps:
            self.save_checkpoint(step + 1)

    def emit(self, row: dict[str, Any]) -> None:
        """One JSON line per event on stdout: the Prefect task streams these into its log."""
        if self.rt.is_main:
            print(json.dumps({"recipe": self.recipe, **row}, default=str), flush=True)

    def context(self):
        config = {"recipe": self.recipe, "train": self.tc.model_dump(mode="json"), "policy": self.cfg.model.policy}
        return self.env.context(config, self.parents)

    def save_checkpoint(self, step: int) -> None:
        states = [runtime.rng_state()]
        if self.rt.distributed:
            gathered: list = [None] * self.rt.world
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        if self.rt.is_main:
            state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "rng": states, "step": step, "metrics": self.metrics}
            checkpoint.save(checkpoint.step_dir(self.run_dir, step), self.model, self.tokenizer, state,
                            self.context(), {"step": step})
            checkpoint.prune(self.run_dir, self.tc.keep_checkpoints, self.so)
            self.emit({"event": "checkpoint", "step": step})
        self.rt.barrier()

    def stop(self, step: int, reason: str) -> None:
        """End the run without a final/: keep a checkpoint of the steps so far only when one of
        them updated the model (a rerun resumes from it); else nothing is kept and a rerun starts over."""
        kept = self.updates > 0
        if kept:
            self.save_checkpoint(step + 1)
        self.write_metrics()
        left = (f"checkpoint step {step + 1} kept ({self.updates} updates): a rerun resumes from it" if kept
                else "no update was made, nothing kept: a rerun starts over")
        self.halt(f"{self.recipe} stopped at step {step + 1}/{self.tc.steps}: {reason}; no final/ committed, {left}")

    def halt(self, message: str) -> None:
        """Announce the stop (the task reads the event, whatever torchrun's exit code) and raise it."""
        self.emit({"event": "stopped", "reason": message})
        raise TrainingStopped(message)

    def write_metrics(self) -> str:
        """metrics.parquet beside the checkpoints: every step's full metrics row."""
        uri = store.join(self.run_dir, "metrics.parquet")
        if self.rt.is_main and self.metrics:
            table = pa.Table.from_pylist([dict(r) for r in self.metrics])
            store.write_bytes(uri, store.parquet_bytes(table), self.so)
        return uri

    def finish(self, summary: dict[str, Any] | None = None, no_signal_hint: str = "") -> Manifest | None:
        """Save the final model with its metrics table; the committed `final/` marks the run done.
        A run none of whose steps updated the model has nothing to commit: it stops instead (a
        `final/` with zero updates is never written). Some judgments failed: a dead judge never ships
        an untrained "final". Every judgment valid but no step had a training signal (every set
        tied, every group's rewards equal): the same config would do the same again, so the stop
        says what to change (`no_signal_hint`, the recipe's); `<section>.allow_no_update` commits
        the unchanged model anyway (plumbing runs), with `updates` 0 in its stats."""
        if not self.updates and failed_judgments(self.metrics):
            self.write_metrics()
            self.halt(f"{self.recipe}: none of its {self.tc.steps} steps updated the model "
                      f"({summary_of_skips(self.metrics)}); no final/ committed")
        if not self.updates and not self.tc.allow_no_update:
            self.write_metrics()
            hint = f"; {no_signal_hint}" if no_signal_hint else ""
            self.halt(f"{self.recipe}: none of its {self.tc.steps} steps updated the model: no step had a "
                      f"training signal ({summary_of_skips(self.metrics)}){hint}; no final/ committed (the same "
                      f"config would do the same again; {self.section_key}.allow_no_update=true commits the "
                      f"unchanged model)")
        final = None
        metrics_uri = self.write_metrics()
        if self.rt.is_main:
            stats = {"steps": self.tc.steps, "updates": self.updates, "recipe": self.recipe,
                     "metrics_uri": metrics_uri, **(summary or {})}
            final = checkpoint.save(store.join(self.run_dir, "final"), self.model, self.tokenizer, None,
                                    self.context(), stats)
            if self.tc.keep_after_finish is not None:  # resuming is over: only the final model is needed
                checkpoint.prune(self.run_dir, self.tc.keep_after_finish, self.so)
            self.emit({"event": "done", "final": final.uri, **(summary or {})})
        self.rt.barrier()
        return final



INVALID_KEYS = ("skipped_invalid", "skipped_invalid_groups", "invalid_judgments")
SKIP_KEYS = ("skipped_invalid", "skipped_invalid_groups", "skipped_all_equal", "no_signal_groups",
             "skipped_no_rewrite", "invalid_judgments")


def summary_of_skips(metrics: list[dict[str, Any]]) -> str:
    """What the steps skipped, summed ("skipped_invalid 12, skipped_all_equal 2"), for one line."""
    totals = {k: sum(int(r.get(k) or 0) for r in metrics) for k in SKIP_KEYS}
    return ", ".join(f"{k} {v}" for k, v in totals.items() if v) or "no training signal"


def failed_judgments(metrics: list[dict[str, Any]]) -> int:
    """Failed or unparseable judgments (and the work they cost) over the steps."""
    return sum(int(r.get(k) or 0) for r in metrics for k in INVALID_KEYS)
