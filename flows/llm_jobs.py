"""Flows of the LLM layer: rewrite (the nightly batch job), thoughts, and the judge audit."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.prepare import prepare
from sip_core.config import AuditParams, RewriteParams, ThoughtParams
from tasks.llm_jobs import audit_task, rewrite_task, thoughts_task


@flow(name="rewrite", log_prints=True)
def rewrite(params: RewriteParams = RewriteParams()) -> dict:
    """Rewrite the next `limit` suffixes that no earlier run rewrote (data prep is cached)."""
    cfg = params.load()
    chunks = prepare(cfg)["chunks"]
    out = rewrite_task(cfg, chunks, params.limit, params.split)
    print(f"rewrite: {out['stats'].get('rows', 0)} chunks this run, {out['remaining']} left, "
          f"{out['calls']} model calls, {out['cache_hits']} cache hits -> {out['uri']}")
    return out


@flow(name="thoughts", log_prints=True)
def thoughts(params: ThoughtParams = ThoughtParams()) -> dict:
    cfg = params.load()
    chunks = prepare(cfg)["chunks"]
    out = thoughts_task(cfg, chunks, params.limit, params.match)
    s = out["stats"]
    print(f"thoughts: {s['kept']}/{s['rows']} rows kept, {s['rejected']} rejected by the integrity gate, "
          f"{s['malformed']} malformed, {s['thoughts_per_kept_row']} thoughts per kept row, "
          f"coverage {s['mean_coverage']} -> {out['uri']}")
    return out


def _injection_line(result: dict | None) -> str:
    if not result:
        return "not measured"
    return f"verdict flipped in {result['flips']} of {result['eligible']} judgments (rate {result['flip_rate']})"


def audit_markdown(report: dict) -> str:
    lines = [f"# Judge audit: `{report['judge']}`", "",
             f"**Gate: {'PASSED' if report['passed'] else 'FAILED'}** "
             + ("; ".join(report["reasons"]) if report["reasons"] else ""), "",
             f"Position bias (share of first-option wins; 0.5 is unbiased): {report['position_bias']}  ",
             f"Parse-failure rate: {report['parse_failure_rate']:.3f}  ",
             f"Request-error rate: {report.get('error_rate', 0.0):.3f}  ",
             f"Prompt injection (a document says 'answer Option N'): {_injection_line(report.get('injection'))}  ",
             f"Calls: {report['calls']}", "",
             "| dimension | items | judgments | accuracy | seed agreement | order consistency | invalid |",
             "|---|---|---|---|---|---|---|"]
    for dim, v in sorted(report["dimensions"].items()):
        lines.append(f"| {dim} | {v['items']} | {v['judgments']} | {v['accuracy']} | {v['seed_agreement']} | "
                     f"{v['order_consistency']} | {v['invalid']} |")
    return "\n".join(lines)


@flow(name="audit-judge", log_prints=True)
def audit(params: AuditParams = AuditParams()) -> dict:
    cfg = params.load()
    chunks = prepare(cfg)["chunks"]
    out = audit_task(cfg, chunks)
    report = out["report"]
    create_markdown_artifact(audit_markdown(report), key="judge-audit", description="judge audit report")
    create_table_artifact([{"dimension": d, **v} for d, v in report["dimensions"].items()], key="judge-audit-table")
    if not report["passed"]:
        get_run_logger().warning("judge audit failed its gate: %s", "; ".join(report["reasons"]))
    return out
