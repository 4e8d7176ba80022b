"""The report's first section: which judge scored the run, and what its audit found."""

from __future__ import annotations

from typing import Any

from sip_core.evaluation.stats import EvalResult
from sip_core.report.markup import Heading, Para, Table
from sip_core.report.format import DASH, NOT_RUN, fmt_num, fmt_pct
from sip_core.report.models import RunResults


class JudgeView:
    """The judge audit as the report reads it: who was audited, and the verdict for any judge id."""

    def __init__(self, audit: dict[str, Any] | None):
        self.audit = audit or None

    @property
    def judge(self) -> str | None:
        return self.audit.get("judge") if self.audit else None

    @property
    def passed(self) -> bool | None:
        return bool(self.audit.get("passed")) if self.audit else None

    def status(self, result: EvalResult) -> str:
        """'PASSED' / 'FAILED' / 'not audited' for the judge behind one result ('' without a judge)."""
        if result.judge is None:
            return ""
        own = result.audit
        if own and own.get("judge") == result.judge:
            return "PASSED" if own.get("passed") else "FAILED"
        if self.audit and self.judge == result.judge:
            return "PASSED" if self.passed else "FAILED"
        return "not audited"

    def label(self, result: EvalResult) -> str:
        if result.judge is None:
            return "none"
        return f"{result.judge} (audit {self.status(result)})"


def audit_blocks(view: JudgeView, results: RunResults) -> list:
    blocks: list = [Heading(2, "Judge and audit", "judge")]
    judges = sorted({r.judge for r in all_results(results) if r.judge})
    judged_sections = "win rates, coherence, safety (unsafe rate), judged factuality, reward gate, thought-use probe"
    if view.audit is None:
        blocks.append(Para(f"No judge audit was supplied for this run. Every judged metric ({judged_sections}) "
                           "rests on a judge whose accuracy and position bias were never checked.", "warn"))
    elif not view.passed:
        reasons = "; ".join(view.audit.get("reasons") or []) or "no reason recorded"
        blocks.append(Para(f"The judge **{view.judge}** FAILED its audit ({reasons}). Every judged metric in this "
                           f"report ({judged_sections}) rests on a judge that failed its audit: read them as "
                           "untrustworthy.", "warn"))
    else:
        blocks.append(Para(f"The judge **{view.judge}** PASSED its audit.", "ok"))
    others = [j for j in judges if j != view.judge]
    if others:
        blocks.append(Para("Results judged by a model the supplied audit does not cover: " + ", ".join(others)
                           + ". Their numbers carry no audit verdict unless their own audit slot says otherwise.",
                           "warn"))
    rows = [["judge (audited)", view.judge or NOT_RUN],
            ["audit verdict", DASH if view.audit is None else ("PASSED" if view.passed else "FAILED")],
            ["reasons", "; ".join(view.audit.get("reasons") or []) or DASH if view.audit else DASH],
            ["position bias (share of first-option wins; 0.5 = none)",
             fmt_num(view.audit.get("position_bias")) if view.audit else DASH],
            ["parse-failure rate", fmt_pct(view.audit.get("parse_failure_rate")) if view.audit else DASH],
            ["judges used by results", ", ".join(judges) or "none"]]
    if view.audit and view.audit.get("error_rate") is not None:
        rows.insert(5, ["request-error rate", fmt_pct(view.audit.get("error_rate"))])
    blocks.append(Table(["", ""], rows))
    dims = (view.audit or {}).get("dimensions") or {}
    if dims:
        keys = ["items", "judgments", "accuracy", "seed_agreement", "order_consistency", "invalid"]
        blocks.append(Table(["dimension", *keys],
                            [[d, *(fmt_num(v.get(k)) if k not in ("accuracy",) else fmt_pct(v.get(k))
                                   for k in keys)] for d, v in sorted(dims.items())],
                            "Audit accuracy per dimension (original vs corrupted text, both orders, several seeds)"))
    return blocks


def all_results(results: RunResults) -> list[EvalResult]:
    out = [r for arm in results.arms for r in arm.evaluations.values() if r is not None]
    return out + [c.result for c in results.comparisons]
