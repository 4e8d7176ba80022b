"""Helpers shared by flows: run a cached task, and redo it if its output has gone missing."""

from __future__ import annotations

from sip_core.infra import artifacts
from sip_core.config import SipConfig


def run_cached(task_fn, cfg: SipConfig, *args):
    """A Prefect cache hit is trusted only while the artifact it names is still committed."""
    version = artifacts.code_version()
    result = task_fn(cfg, *args, version)
    if artifacts.load_committed(result.uri, cfg.run.storage_options) is None:
        result = task_fn.with_options(refresh_cache=True)(cfg, *args, version)
    return result
