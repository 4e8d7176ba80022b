"""How many heavy stages of one flow run at once on this machine (`lifecycle.parallel`).

Independent stages (the arms' training, the evaluations) are submitted together; each takes a
slot before its work starts, after its inputs are ready, so a waiting stage never holds one.
On a CPU each slot gets cores / parallel torch threads: SmolLM2-135M's decode steps and small
batches gain little from a second thread here, so two stages on one thread each finish sooner
than the same stages one after the other on two (benchmarks/bench_train.py, decode threads).
"""

from __future__ import annotations

import contextlib
import os
import threading

_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_slot(parallel: int) -> int | None:
    """torch threads for one of `parallel` concurrent stages; None: leave torch's own count."""
    return max(1, cores() // parallel) if parallel > 1 else None


@contextlib.contextmanager
def compute_slot(parallel: int):
    """Hold one of `parallel` process-wide slots while the block runs (1: one stage at a time)."""
    with _SLOTS_LOCK:
        slots = _SLOTS.setdefault(parallel, threading.BoundedSemaphore(parallel))
    with slots:
        yield
