"""The Judges box on the report's first screen (training judge, evaluation judge, each one's
audit, their agreement, whether grading is circular) and the audit's details further down."""

from __future__ import annotations

from typing import Any

from sip_core.evaluation.stats import EvalResult
from sip_core.report.markup import Box, Heading, Para, Table
from sip_core.report.format import NOT_RUN, fmt_num, fmt_pct
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


JUDGED = "win rates, coherence, safety, judged factuality, reward gate, thought-use probe"


def is_proxy(judge: str | None, role: dict | None = None) -> bool:
    return (role or {}).get("backend") == "proxy" or str(judge or "").startswith("proxy:")


def audit_cell(view: JudgeView, judge: str | None, role: dict | None = None) -> str:
    """One judge's audit verdict in words; a proxy's pass is no evidence (it passes by construction)."""
    if view.audit is None or (judge and view.judge and judge != view.judge):
        return "**not audited**"
    if not view.passed:
        return "**FAILED**: " + ("; ".join(view.audit.get("reasons") or []) or "no reason recorded")
    if is_proxy(view.judge, role):
        return "passes by construction (a proxy stand-in): no evidence about judge quality"
    text = f"passed (position bias {fmt_num(view.audit.get('position_bias'))})"
    dims, gated = view.audit.get("dimensions") or {}, view.audit.get("gated_dimensions")
    if gated is not None and set(gated) != set(dims):  # the role uses only some dimensions (judge.gate_dimensions)
        reported = ", ".join(f"{d} {fmt_num(dims[d].get('accuracy'))}" for d in sorted(set(dims) - set(gated)))
        text += f" on {', '.join(gated)}, the dimensions its role uses; reported, not gated: {reported}"
    return text


def _role(role: dict | None) -> str:
    if not role:
        return NOT_RUN
    return f"{role.get('backend')}: {role.get('model')}" + (f" (verdict {role['verdict']})" if role.get("verdict")
                                                              else "")


def agreement_line(agreement: Any) -> str:
    if agreement is None:
        return "Agreement of the two judges on the same held-out pairs: not measured in this run."
    a = agreement if isinstance(agreement, dict) else getattr(agreement, "__dict__", {})
    rate, low, high = a.get("rate"), a.get("low"), a.get("high")
    iv = f" [{fmt_pct(low)}, {fmt_pct(high)}]" if low is not None and high is not None else ""
    return (f"Agreement of the two judges on the same held-out pairs: {fmt_pct(rate)}{iv} "
            f"({fmt_num(a.get('agree'))} of {fmt_num(a.get('n'))}).")


def circular(results: RunResults) -> bool:
    return bool((results.judges or {}).get("circular"))


def judges_box(view: JudgeView, results: RunResults) -> Box:
    """Which judge trained, which graded, each one's audit, their agreement, and whether the
    comparison is circular (then no judged verdict anywhere in the report)."""
    roles = results.judges or {}
    graded = sorted({r.judge for r in all_results(results) if r.judge})
    audits = roles.get("audits") or {}
    recorded = bool(roles.get("training") or roles.get("evaluation"))  # judge_roles ran for this run
    view = JudgeView(audits["training"]) if audits.get("training") else view
    eval_audit = JudgeView(audits["evaluation"]) if audits.get("evaluation") else \
        next((JudgeView(r.audit) for r in all_results(results) if r.judge and r.audit), view)
    rows = [["training judge", _role(roles.get("training")) if recorded else (view.judge or "not recorded"),
             audit_cell(view, None, roles.get("training"))],
            ["evaluation judge", _role(roles.get("evaluation")) if recorded else ", ".join(graded) or "not recorded",
             audit_cell(eval_audit, graded[0] if len(graded) == 1 else None, roles.get("evaluation"))]]
    blocks: list = [Heading(2, "Judges", "judges-heading"), Table(["role", "judge", "audit"], rows)]
    if not recorded:
        blocks.append(Para("**Judge roles were not recorded for this run: whether grading is circular is "
                           "unknown.**"))
    elif circular(results):
        blocks.append(Para("**Grading is circular**: " + "; ".join(roles.get("reasons") or ["(no reason recorded)"])
                           + ". This report therefore gives no verdict on any judged metric (" + JUDGED
                           + "); differences in them are only counted."))
    else:
        blocks.append(Para("Grading is independent: the evaluation judge is not the training judge and scores "
                           "with none of the trained models."))
    blocks.append(Para(agreement_line(roles.get("agreement"))))
    failed = [v for v in (view, eval_audit) if v.audit is not None and not v.passed]
    if eval_audit.audit is not None and not eval_audit.passed:
        blocks.append(Para(f"**Every judged metric ({JUDGED}) rests on a judge that failed its audit: read them "
                           "as untrustworthy.**"))
    if view is not eval_audit and view.audit is not None and not view.passed:
        blocks.append(Para("**The training judge failed its audit: what the arms were trained toward is "
                           "untrustworthy.**"))
    bad = circular(results) or bool(failed) or not recorded
    return Box("judges", blocks, "warn" if bad else "note")


def audit_blocks(view: JudgeView, results: RunResults) -> list:
    """The audit's details (below the first screen): biases, failure rates, per-dimension accuracy."""
    blocks: list = [Heading(2, "Judge audit details", "judge")]
    if view.audit is None:
        return blocks + [Para(f"No judge audit was supplied for this run: every judged metric ({JUDGED}) rests "
                              "on a judge whose accuracy and position bias were never checked.")]
    judges = sorted({r.judge for r in all_results(results) if r.judge})
    others = [j for j in judges if j != view.judge]
    if others:
        blocks.append(Para("Results judged by a model the supplied audit does not cover: " + ", ".join(others)
                           + ". Their numbers carry no audit verdict unless their own audit slot says otherwise.",
                           "warn"))
    rows = [["judge (audited)", view.judge or NOT_RUN],
            ["audit verdict", audit_cell(view, view.judge)],
            ["position bias (share of first-option wins; 0.5 = none)", fmt_num(view.audit.get("position_bias"))],
            ["parse-failure rate", fmt_pct(view.audit.get("parse_failure_rate"))],
            ["judges used by results", ", ".join(judges) or "none"]]
    if view.audit.get("error_rate") is not None:
        rows.insert(4, ["request-error rate", fmt_pct(view.audit.get("error_rate"))])
    blocks.append(Table(["", ""], rows))
    dims = view.audit.get("dimensions") or {}
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
