"""Flows of the LLM layer: rewrite (the nightly batch job), thoughts, and the judge audit."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.prepare import prepare
from sip_core.config import AuditParams, RewriteParams, SipConfig, ThoughtParams
from sip_core.infra.artifacts import ArtifactRef
from sip_core.report.summaries import audit_markdown
from tasks.llm_jobs import AuditResult, RewriteResult, ThoughtsResult, audit_task, rewrite_task, thoughts_task


def _job(job_task, params, *args):
    """Run `job_task` over the (cached) prepared chunks and print its summary line."""
    cfg = params.load()
    out = job_task(cfg, prepare(cfg)["chunks"], *args)
    print(out.summary())
    return out


@flow(name="rewrite", log_prints=True)
def rewrite(params: RewriteParams = RewriteParams()) -> RewriteResult:
    """Rewrite the next `limit` suffixes that no earlier run rewrote (data prep is cached)."""
    return _job(rewrite_task, params, params.limit, params.split)


@flow(name="thoughts", log_prints=True)
def thoughts(params: ThoughtParams = ThoughtParams()) -> ThoughtsResult:
    return _job(thoughts_task, params, params.limit, params.match)


def heldout_thoughts(cfg: SipConfig, chunks: ArtifactRef) -> ThoughtsResult | None:
    """Thoughts in the first eval.thought_rows held-out chunks: the thought-NLL evaluation's rows,
    disjoint from every training row (None when that suite is off)."""
    if "thought_nll" not in cfg.eval.suites:
        return None
    return thoughts_task(cfg, chunks, cfg.eval.thought_rows, "exact", "heldout")


@flow(name="audit-judge", log_prints=True)
def audit(params: AuditParams = AuditParams()) -> AuditResult:
    cfg = params.load()
    chunks = prepare(cfg)["chunks"]
    out = audit_task(cfg, chunks)
    report = out.report
    create_markdown_artifact(audit_markdown(report), key="judge-audit", description="judge audit report")
    create_table_artifact([{"dimension": d, **v} for d, v in report["dimensions"].items()], key="judge-audit-table")
    if not report["passed"]:
        get_run_logger().warning("judge audit failed its gate: %s", "; ".join(report["reasons"]))
    return out
