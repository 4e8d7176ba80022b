"""LLM-job tasks: rewrite, thought insertion, judge audit. Thin: secrets, run ids, caching."""

from __future__ import annotations

from prefect import task
from prefect.runtime import flow_run, task_run

from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import Provenance
from sip_core.judge.audit import AuditReport, audit_judge, build_pairs, save_report
from sip_core.config import SipConfig
from sip_core.llm.factory import open_llm
from sip_core.infra.run_context import RunContext
from sip_core.augment.rewrites import rewrite_next_batch
from sip_core.augment.thought_insertion import insert_thoughts
from tasks.prepare import ref, transient


def provenance() -> Provenance:
    return Provenance(str(flow_run.id) if flow_run.id else None, str(task_run.id) if task_run.id else None)


def api_key(cfg: SipConfig, role: str) -> str | None:
    """A Prefect Secret block wins over the env var; the key goes to the client and nowhere else."""
    block = getattr(cfg, role).api_key_block
    if not block:
        return None
    from prefect.blocks.system import Secret

    return Secret.load(block).get()


def _llm(cfg: SipConfig, role: str):
    return open_llm(cfg, role, provenance(), api_key(cfg, role))


def _chunks(cfg: SipConfig, chunks: dict):
    return artifacts.load_manifest(chunks["uri"], cfg.run.storage_options)


# No Prefect result cache here: the judgment cache already makes a rerun free of model calls,
# and the rewrite job must look for new chunks on every run.
OPTIONS = dict(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=transient)


@task(name="rewrite-batch", **OPTIONS)
def rewrite_task(cfg: SipConfig, chunks: dict, limit: int, split: str) -> dict:
    llm = _llm(cfg, "rewriter")
    batch = rewrite_next_batch(RunContext(cfg, provenance()), _chunks(cfg, chunks), llm, limit, split)
    out = ref(batch.manifest) if batch.manifest else {"uri": None, "stats": {}}
    return {**out, "remaining": batch.remaining, "done_before": batch.done_before, "calls": llm.calls,
            "cache_hits": llm.hits}


@task(name="insert-thoughts", **OPTIONS)
def thoughts_task(cfg: SipConfig, chunks: dict, limit: int | None, match: str) -> dict:
    llm = _llm(cfg, "teacher")
    manifest = insert_thoughts(RunContext(cfg, provenance()), _chunks(cfg, chunks), llm, limit, match)
    return {**ref(manifest), "calls": llm.calls, "cache_hits": llm.hits}


@task(name="judge-audit", **OPTIONS)
def audit_task(cfg: SipConfig, chunks: dict) -> dict:
    env = RunContext(cfg, provenance())
    judge = _llm(cfg, "judge")
    teacher = _llm(cfg, "teacher") if cfg.judge.audit_llm_corruptions else None
    pairs = build_pairs(env, _chunks(cfg, chunks), cfg.judge.audit_items, teacher)
    rows = [r for f in pairs.files for r in store.read_parquet(f, cfg.run.storage_options).to_pylist()]
    report: AuditReport = audit_judge(rows, judge, cfg.judge)
    saved = save_report(env, pairs, report)
    return {"pairs": ref(pairs), "audit": ref(saved), "report": saved.stats, "calls": judge.calls,
            "cache_hits": judge.hits}
