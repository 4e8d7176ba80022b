"""LLM-job tasks: rewrite, thought insertion, judge audit. Thin: secrets, run ids, caching."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import task
from pydantic import BaseModel

from sip_core.infra.artifacts import ArtifactRef
from sip_core.judge.audit import run_audit
from sip_core.config import SipConfig
from sip_core.llm.factory import open_llm
from sip_core.augment.rewrites import rewrite_next_batch
from sip_core.augment.thought_insertion import insert_thoughts
from tasks.progress import CountProgress
from tasks.runs import provenance, run_context, transient


def api_key(cfg: SipConfig, role: str) -> str | None:
    """A Prefect Secret block wins over the env var; the key goes to the client and nowhere else."""
    block = getattr(cfg, role).api_key_block
    if not block:
        return None
    from prefect.blocks.system import Secret

    return Secret.load(block).get()


def _llm(cfg: SipConfig, role: str):
    return open_llm(cfg, role, provenance(), api_key(cfg, role))


def _tracker(job: str):
    """Progress of a job's model calls in the task's log (counts, rate, ETA; tqdm on a terminal)."""
    from prefect import get_run_logger

    return lambda total: CountProgress(job, total, get_run_logger())


class LLMJobResult(BaseModel):
    """Model calls a job made, and the judgment-cache hits that spared others."""

    calls: int = 0
    cache_hits: int = 0


class RewriteResult(LLMJobResult):
    batch: ArtifactRef | None = None  # None: nothing left to rewrite
    remaining: int = 0
    done_before: int = 0

    def summary(self) -> str:
        rows, uri = (self.batch.stats.get("rows", 0), self.batch.uri) if self.batch else (0, None)
        status = self.batch.stats.get("status", {}) if self.batch else {}
        unparsed = status.get("unparseable", 0)
        return (f"rewrite: {rows} chunks this run ({status.get('ok', 0)} ok"
                + (f", {unparsed} unparseable: asked again next run" if unparsed else "")
                + f"), {self.remaining} left, {self.calls} model calls, {self.cache_hits} cache hits -> {uri}")


class ThoughtsResult(LLMJobResult, ArtifactRef):
    """The thought data (an artifact reference), with the teacher's calls."""

    def summary(self) -> str:
        s = self.stats
        return (f"thoughts ({s.get('split', 'train')}): {s['kept']}/{s['rows']} rows kept, {s['rejected']} rejected by the integrity gate, "
                f"{s['malformed']} malformed, {s.get('failed', 0)} failed calls (asked again next run), "
                f"{s['thoughts_per_kept_row']} thoughts per kept row, "
                f"coverage {s['mean_coverage']} -> {self.uri}")


class AuditResult(LLMJobResult):
    pairs: ArtifactRef
    audit: ArtifactRef | None = None  # None: a call failed, so nothing was committed (report.failed_calls)
    report: dict[str, Any] = {}  # the audit report (`AuditReport` as a dict: judge, passed, reasons, ...)


# No Prefect result cache here: the judgment cache already makes a rerun free of model calls,
# and the rewrite job must look for new chunks on every run.
OPTIONS = dict(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=transient)


@task(name="rewrite-batch", **OPTIONS)
def rewrite_task(cfg: SipConfig, chunks: ArtifactRef, limit: int, split: str) -> RewriteResult:
    llm = _llm(cfg, "rewriter")
    batch = rewrite_next_batch(run_context(cfg), chunks.manifest(cfg.run.storage_options), llm, limit,
                               split, track=_tracker("rewrite"))
    return RewriteResult(batch=ArtifactRef.of(batch.manifest) if batch.manifest else None, remaining=batch.remaining,
                         done_before=batch.done_before, calls=llm.calls, cache_hits=llm.hits)


@task(name="insert-thoughts", **OPTIONS)
def thoughts_task(cfg: SipConfig, chunks: ArtifactRef, limit: int | None, match: str,
                  split: str = "train") -> ThoughtsResult:
    """Thoughts for the first `limit` chunks of `split`: train for the recipes, heldout for the
    evaluation's thought NLL."""
    llm = _llm(cfg, "teacher")
    manifest = insert_thoughts(run_context(cfg), chunks.manifest(cfg.run.storage_options), llm, limit,
                               match, split, track=_tracker(f"thoughts ({split})"))
    return ThoughtsResult(**ArtifactRef.of(manifest).model_dump(), calls=llm.calls, cache_hits=llm.hits)


@task(name="judge-audit", **OPTIONS)
def audit_task(cfg: SipConfig, chunks: ArtifactRef) -> AuditResult:
    env = run_context(cfg)
    judge = _llm(cfg, "judge")
    teacher = _llm(cfg, "teacher") if cfg.judge.audit_llm_corruptions else None
    from prefect import get_run_logger

    log = get_run_logger()
    pairs, report, saved = run_audit(env, chunks.manifest(cfg.run.storage_options), judge, teacher,
                                     track=lambda phase, total: CountProgress(f"judge audit: {phase}", total, log))
    return AuditResult(pairs=ArtifactRef.of(pairs), audit=ArtifactRef.of(saved) if saved else None,
                       report=asdict(report), calls=judge.calls,
                       cache_hits=judge.hits)
