"""The filter stage's pool of forked rule workers, one per core, shared by every shard of a process.

The rules are pure Python (~0.3 ms a document), so under the GIL they use one core; shards from
any thread of this process share the pool, so its workers stay busy across shard boundaries.
fork: a worker starts in milliseconds and never re-runs the caller's __main__ (spawn does: an
unguarded script would hang). Workers only compute: tables and stages in, tables out.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor

from sip_core.data.rule_filters import RuleStage

_POOL: ProcessPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def forkable(stages: list) -> bool:
    """Stages that can run in a forked worker: the rule stage alone (no LLM client, no judgment cache)."""
    return all(type(s) is RuleStage for s in stages)


def worker_count() -> int:
    """Worker processes for rule labelling: one per core, or 0 to label in this process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    usable = "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon
    return cores if usable and cores > 1 else 0


def current_pool() -> ProcessPoolExecutor | None:
    """The running pool, if any (without starting one)."""
    return _POOL


def rule_pool() -> ProcessPoolExecutor | None:
    """This process's pool of rule workers (created on first use, kept until `close_rule_pool`), or
    None on one core or without fork."""
    global _POOL
    workers = worker_count()
    if not workers:
        return None
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        return _POOL


def close_rule_pool() -> None:
    """Stop the rule workers (the filter stage calls this when it commits)."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown()
