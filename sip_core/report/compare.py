"""Several runs' headline tables side by side: for sweeps, and for "is tonight's run different
from last week's?".

    runs = [load_run(ref) for ref in ("runs/nightly", "runs/last-week/reports/tiny-ab12")]
    print(compare_markdown(runs))

A run is named by its report folder, that folder's results.json, or its run root (the newest
committed report under `<root>/reports/`). Per arm, one table: the headline metrics as rows, the
runs as columns (lettered A, B, ...), each cell estimate [95% interval] n. A cell is marked
**> X** when that run is better than run X on that arm and the two intervals do not overlap;
judged metrics are marked only when both runs graded with the same, non-circular evaluation judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sip_core.evaluation.stats import Interval
from sip_core.infra import artifacts, store
from sip_core.report.first_screen import LETTERS, _cell, identity_line
from sip_core.report.format import NOT_RUN, has_items, overlaps
from sip_core.report.headline import Metric, base_arm, interval_of, nll_of, shown_metrics
from sip_core.report.judge import circular
from sip_core.report.markup import Document, Heading, Para, Table, to_html, to_markdown
from sip_core.report.models import RunResults


@dataclass
class LoadedRun:
    ref: str  # what the user named
    results_uri: str
    results: RunResults


def _newest_report(root: str, storage_options: dict[str, Any] | None) -> str | None:
    """The results.json of the newest committed report under `<root>/reports/`."""
    found = [f for f in store.files_under(store.join(root, "reports"), storage_options) if f.endswith("/results.json")]
    dated = []
    for uri in found:
        manifest = artifacts.load_committed(uri.rsplit("/", 1)[0], storage_options)
        if manifest is not None:
            dated.append((manifest.created_at, uri))
    return max(dated)[1] if dated else None


def load_run(ref: str, storage_options: dict[str, Any] | None = None) -> LoadedRun:
    """A run's results from its report folder, its results.json or its run root."""
    ref = str(ref)
    candidates = [ref] if ref.endswith(".json") else [store.join(ref, "results.json")]
    uri = next((c for c in candidates if store.exists(c, storage_options)), None)
    uri = uri or (None if ref.endswith(".json") else _newest_report(ref, storage_options))
    if uri is None:
        raise FileNotFoundError(f"report compare: no results.json at {ref} (name a report folder, its results.json, "
                                "or a run root with committed reports under reports/)")
    try:
        results = RunResults.model_validate_json(store.read_bytes(uri, storage_options))
    except ValueError as exc:
        raise FileNotFoundError(f"report compare: {uri} is not a run report's results.json "
                                f"({str(exc).splitlines()[0]})") from None
    return LoadedRun(ref, uri, results)


def comparable(a: RunResults, b: RunResults, metric: Metric) -> bool:
    """May a difference between two runs on `metric` be called? Judged metrics need the same,
    non-circular evaluation judge in both."""
    if not metric.judged:
        return True
    if circular(a) or circular(b) or not a.judges or not b.judges:
        return False
    return a.judges.get("evaluation") == b.judges.get("evaluation")


def _value(run: RunResults, metric: Metric, arm_name: str) -> Interval | None:
    arm = run.arm(arm_name)
    if arm is None or (metric.vs_base and arm_name == base_arm(run)):
        return None
    return interval_of(run, metric, arm)


def arm_table(runs: list[LoadedRun], arm_name: str) -> Table:
    rows = []
    for metric in shown_metrics(*(r.results for r in runs)):
        row = [metric.label]
        values = [_value(r.results, metric, arm_name) for r in runs]
        for i, (run, iv) in enumerate(zip(runs, values)):
            if metric.key == "heldout_nll":
                nll = nll_of(arm) if (arm := run.results.arm(arm_name)) else None
                row.append(f"{nll[0]:.3f} n={nll[1]}" if nll else NOT_RUN)
                continue
            if metric.vs_base and arm_name == base_arm(run.results):
                row.append("(the base model)")
                continue
            marks = [LETTERS[j] for j, (other, ov) in enumerate(zip(runs, values))
                     if j != i and has_items(iv) and has_items(ov) and not overlaps(iv, ov)
                     and (iv.estimate > ov.estimate) == (metric.better == "higher")
                     and comparable(run.results, other.results, metric)]
            row.append(_cell(iv, marks) if run.results.arm(arm_name) else "no such arm")
        rows.append(row)
    return Table(["metric", *(f"{LETTERS[i]} · {r.results.run_name}" for i, r in enumerate(runs))], rows,
                 f"{arm_name}: each run's value; **> X**: better than run X, intervals not overlapping")


def compare_document(runs: list[LoadedRun]) -> Document:
    doc = Document("Runs compared: " + " · ".join(r.results.run_name for r in runs))
    doc.add(Heading(2, "Runs", "runs"))
    for i, run in enumerate(runs):
        grading = ("grading circular: judged metrics are never marked" if circular(run.results)
                   else "grading not recorded" if not run.results.judges else "grading independent")
        doc.add(Para(f"**{LETTERS[i]}** ({run.ref}): {identity_line(run.results)} {grading}."))
    arms: list[str] = []
    for run in runs:
        arms += [a.name for a in run.results.arms if a.name not in arms]
    for name in arms:
        doc.add(Heading(2, name), arm_table(runs, name))
    doc.add(Para("Marks compare runs arm by arm: non-overlapping 95% intervals (a conservative test). Judged "
                 "metrics (win rate, coherence, safety, judged factuality, reward) are marked only when both runs "
                 "graded with the same evaluation judge and neither run's grading is circular.", "note"))
    return doc


def compare_markdown(runs: list[LoadedRun]) -> str:
    return to_markdown(compare_document(runs))


def compare_html(runs: list[LoadedRun]) -> str:
    return to_html(compare_document(runs), {})
