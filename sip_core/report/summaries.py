"""Short Markdown summaries of one job's results (a Prefect artifact, the CLI's output): one
model's evaluations, and a judge audit. The run report itself is `render_report`."""

from __future__ import annotations

from typing import Any


def markdown_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """A pipe table's lines (cells as given: no escaping)."""
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def _value(v):
    """A number, or an interval's estimate."""
    if isinstance(v, dict) and "estimate" in v:
        return float(v["estimate"])
    return float(v) if isinstance(v, float) else None


def _headline(result: dict[str, Any]) -> str:
    return ", ".join(f"{k} {_value(v):.4g}" for k, v in result.items()
                     if isinstance(_value(v), float) and k not in ("n", "calls"))[:120]


def results_markdown(name: str, results: dict[str, dict[str, Any]]) -> str:
    """One model's evaluations (`ModelEvaluation.results`): a row per evaluation with its headline numbers."""
    rows = [[key, r.get("n"), _headline(r), r.get("judge") or "-"] for key, r in sorted(results.items())]
    failed = {k: n for k, r in sorted(results.items()) if (n := r.get("details", {}).get("failed_calls"))}
    note = ["", "**Partial** (not committed; the next run asks the failed judge calls again): "
            + ", ".join(f"{k} {n} failed" for k, n in failed.items())] if failed else []
    return "\n".join([f"# Evaluation of `{name}`", "",
                      *markdown_table(["evaluation", "n", "headline", "judge"], rows), *note])


def _injection_line(result: dict | None) -> str:
    if not result:
        return "not measured"
    return f"verdict flipped in {result['flips']} of {result['eligible']} judgments (rate {result['flip_rate']})"


AUDIT_COLUMNS = ("items", "judgments", "accuracy", "seed_agreement", "order_consistency", "invalid")


def audit_markdown(report: dict[str, Any]) -> str:
    """A judge audit report (`AuditReport` as a dict): its gate, biases and per-dimension scores."""
    rows = [[dim, *(v[c] for c in AUDIT_COLUMNS)] for dim, v in sorted(report["dimensions"].items())]
    return "\n".join([
        f"# Judge audit: `{report['judge']}`", "",
        f"**Gate: {'PASSED' if report['passed'] else 'FAILED'}** "
        + ("; ".join(report["reasons"]) if report["reasons"] else ""), "",
        f"Position bias (share of first-option wins; 0.5 is unbiased): {report['position_bias']}  ",
        f"Parse-failure rate: {report['parse_failure_rate']:.3f}  ",
        f"Request-error rate: {report.get('error_rate', 0.0):.3f}  ",
        f"Prompt injection (a document says 'answer Option N'): {_injection_line(report.get('injection'))}  ",
        f"Calls: {report['calls']}", "",
        *markdown_table(["dimension", *(c.replace("_", " ") for c in AUDIT_COLUMNS)], rows)])
