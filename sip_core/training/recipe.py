"""The skeleton every recipe shares: torchtune's setup / train / save, nanochat's loop.

A recipe names its run and its parents (`__init__`), builds what it trains with once the policy
is loaded (`setup`), and runs one optimizer step's forward/backward (`train_step`, returning the
step's metrics). `Recipe.run` is the rest, written once: reuse of a finished run, the lineage of
the inputs, loading (or resuming) the policy, the loop, held-out metrics when due, the update,
logging, checkpoints and the final model.

    class Sft(Recipe):
        section_key = "sft"  # the config section: the keys its stops name
        def __init__(self, cfg, thoughts, provenance):
            super().__init__("sft", RunContext(cfg, provenance), cfg.sft, [thoughts])
        def setup(self): ...
        def train_step(self, step): ...
    final = Sft(cfg, thoughts, provenance).run()
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections import Counter
from typing import Any

from sip_core.config import TrainConfig
from sip_core.infra.artifacts import Manifest
from sip_core.infra.run_context import RunContext
from sip_core.training.session import TrainingStopped, TrainSession

__all__ = ["Recipe", "Timers", "TrainingStopped", "mean"]


class Timers(Counter):
    """Seconds spent in each labelled section of a step: `with timers("generate"): ...`."""

    @contextlib.contextmanager
    def __call__(self, section: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self[section] += time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"time_{k}_s": round(v, 3) for k, v in self.items()}


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


class Recipe(ABC):
    """One training method. Subclasses set up their data and engines and write `train_step`."""

    # The config section the recipe trains from (`pretrain`, `rlmt`, ...): the keys its stops name.
    section_key: str
    # The metrics keys (skipped, seen) counting work skipped for failed or unparseable judgments,
    # whose share `<section_key>.max_invalid_share` bounds; None: the recipe judges nothing.
    invalid_work: tuple[str, str] | None = None
    # Why a run with no update at all had no training signal, and what to change (the stop says it).
    no_signal_hint: str = "no micro-batch had a loss to train on: check what data the section selects"

    def __init__(self, name: str, env: RunContext, section: TrainConfig, parents: list[Manifest]):
        self.env, self.cfg, self.tc, self.parents = env, env.cfg, section, parents
        self.session = TrainSession(name, env, section, parents, self.section_key)
        self.rt = self.session.rt

    def setup(self) -> None:
        """Data, reference models and engines; `self.model` / `self.tok` are loaded by then."""

    @abstractmethod
    def train_step(self, step: int) -> dict[str, Any]:
        """Forward/backward over this step's micro-batches; the step's metrics."""

    def evaluate(self, step: int) -> dict[str, Any]:
        """Held-out metrics due at this step (before its update)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """What the final checkpoint's stats add (after the last step)."""
        return {}

    def run(self) -> Manifest:
        session = self.session
        if done := session.reused():
            return done
        self.env.lineage().record(self.parents)
        self.model, self.tok = session.load_policy()
        self.setup()
        for step in session.steps():
            metrics = self.train_step(step)  # generate, judge, forward/backward
            metrics.update(self.evaluate(step))
            grad_norm = session.optimizer_step()  # update
            session.log(step, metrics, grad_norm)  # log
            self.stop_if_invalid(step)  # a dead or confused judge is not training signal
            session.checkpoint_if_due(step)  # checkpoint
        return session.finish(self.summary(), self.no_signal_hint)

    def stop_if_invalid(self, step: int) -> None:
        """Stop (no final/) once more than `max_invalid_share` of the work this launch has seen was
        skipped for failed judgments. Counted from this launch's steps only: a rerun after the
        endpoint recovered is judged on its own work. Means over ranks, so every rank agrees."""
        if self.invalid_work is None:
            return
        session, (skipped_key, seen_key) = self.session, self.invalid_work
        rows = [r for r in session.metrics if r["step"] > session.start_step]
        skipped = self.rt.all_mean(float(sum(r.get(skipped_key) or 0 for r in rows)))
        seen = self.rt.all_mean(float(sum(r.get(seen_key) or 0 for r in rows)))
        if seen and skipped / seen > self.tc.max_invalid_share:
            session.stop(step, f"{skipped / seen:.0%} of its {seen_key} were skipped for failed or unparseable "
                               f"judgments ({skipped_key} {skipped:g} of {seen:g}; {self.section_key}."
                               f"max_invalid_share {self.tc.max_invalid_share:g}), is the judge endpoint up?")
