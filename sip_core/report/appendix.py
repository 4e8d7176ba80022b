"""The appendix: every pairwise comparison the run allows, decided or not, one compact table row
each (collapsed under `<details>`): the headline metrics', the other interval metrics' (XSTest,
TruthfulQA MC1, Pass@k) and the thought-use probe's."""

from __future__ import annotations

from itertools import combinations

from sip_core.report.format import fmt_iv, has_items
from sip_core.report.headline import Decision, Metric, decisions
from sip_core.report.first_screen import verdicts_allowed
from sip_core.report.markup import Details, Heading, Para, Table
from sip_core.report.models import RunResults
from sip_core.report.specs import spec_of

COVERED = {"unsafe rate", "judged factuality", "TruthfulQA MC2", "Mean@k", "RLMT reward", "win rate",
           "coherence score"}


def other_decisions(results: RunResults) -> list[Decision]:
    """Interval metrics outside the headline (XSTest refusals, TruthfulQA MC1, Pass@k), between arms."""
    keys: list[str] = []
    for arm in results.arms:
        keys += [k for k, v in arm.evaluations.items() if v is not None and k not in keys and k != "probe"]
    out = []
    for key in keys:
        sample = next(a.evaluations[key] for a in results.arms if a.evaluations.get(key) is not None)
        headers = spec_of(sample)[1]
        for label, get, better in spec_of(sample)[3]:
            if label in COVERED:
                continue
            metric = Metric(key, f"{label} ({key})", label, sample.judge is not None, better or "higher")
            measured = [(a.name, get(a.evaluations[key])) for a in results.arms
                        if a.evaluations.get(key) is not None and spec_of(a.evaluations[key])[1] == headers]
            measured = [(n, iv) for n, iv in measured if has_items(iv)]
            out += [Decision(metric, na, nb, ia, ib) for (na, ia), (nb, ib) in combinations(measured, 2)]
    return out


def verdict(results: RunResults, d: Decision) -> str:
    if not d.decided:
        return "undecided" if d.iv_b is not None else "undecided (interval contains 50%)"
    if not verdicts_allowed(results, d.metric):
        return "intervals separate; no verdict (circular grading)"
    return f"decided: {d.winner} better"


def appendix_blocks(results: RunResults) -> list:
    found = decisions(results) + other_decisions(results)
    head = Heading(2, "Appendix: every pairwise comparison", "appendix")
    if not found:
        return [head, Para("No metric was measured on two arms with intervals, and no pairwise comparison was run.")]
    rows = []
    for d in found:
        a = f"{d.subject}: {d.a}" if d.subject else d.a
        rows.append([d.metric.label, a, d.b, fmt_iv(d.iv_a), fmt_iv(d.iv_b) if d.iv_b is not None else "vs 50%",
                     str(d.iv_a.n) if d.iv_b is None else f"{d.iv_a.n} / {d.iv_b.n}", verdict(results, d)])
    undecided = sum(not d.decided for d in found)
    table = Table(["metric", "A", "B", "A [95% CI]", "B [95% CI]", "n", "verdict"], rows)
    return [head,
            Para(f"{len(found)} comparisons, {undecided} undecided. Undecided means this run, at this n, cannot "
                 "tell the two apart, not that they are equal.", "note"),
            Details(f"All {len(found)} pairwise comparisons", [table])]
