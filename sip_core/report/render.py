"""Render a `RunResults` into a report whose first screen answers the question.

Order: the first screen (identity, Judges box, headline table: `first_screen`), the decided
comparisons in words and the undecided ones counted per metric family with a power estimate,
then training (curves and aggregates over all steps), the per-evaluation tables, the audit's
details, lineage, and last an appendix with every pairwise comparison (collapsed in HTML).
Every interval is the evaluation library's 95% interval; non-overlap of two of them is a
conservative test of a difference, so "undecided" means "not shown by this run at this n",
never "equal".
"""

from __future__ import annotations

import json
from collections.abc import Callable

from sip_core.evaluation.rlmt import CONDITIONS, ProbeResult
from sip_core.evaluation.winrate import CoherenceResult, WinRateResult
import sip_core.report.plots as plots
import sip_core.report.training as training
from sip_core.report.appendix import appendix_blocks
from sip_core.report.first_screen import first_screen_blocks
from sip_core.report.markup import Bullets, Details, Document, Heading, Image, Para, Table, slug, to_html, to_markdown
from sip_core.report.format import DASH, NOT_RUN, cluster_note, fmt_iv, fmt_num, fmt_seeds
from sip_core.report.judge import JudgeView, audit_blocks
from sip_core.report.models import ReportFiles, RunResults
from sip_core.report.specs import EXPECTED, SECTIONS, caption_of, spec_of


# --------------------------------------------------------------------------- sections


class Renderer:
    def __init__(self, results: RunResults, with_plots: bool = True):
        self.r, self.with_plots = results, with_plots
        self.view = JudgeView(results.judge_audit)
        self.images: dict[str, bytes] = {}

    def image(self, name: str, make: Callable[[], bytes | None], alt: str, caption: str = "") -> list:
        """An Image block for the PNG `make()` draws (not drawn at all without plots)."""
        png = make() if self.with_plots else None
        if png is None:
            return []
        self.images[name] = png
        return [Image(name, alt, caption)]

    # ---------------------------------------------------------------- run and arms

    def run_blocks(self) -> list:
        blocks: list = [Heading(2, "Run", "run")]
        rows = [[a.name, " → ".join(s.recipe for s in a.stages) or DASH, a.checkpoint or DASH,
                 str(sum(1 for v in a.evaluations.values() if v is not None)), a.description or DASH]
                for a in self.r.arms]
        blocks.append(Table(["arm", "stages", "final checkpoint", "evaluations", "description"], rows or
                            [["no arms", "", "", "", ""]], "Arms (models compared)"))
        flat = _flatten(self.r.config)
        if flat:
            shown = flat[:60]
            blocks.append(Table(["config key", "value"], [[k, v] for k, v in shown],
                                "Config summary" + (f" (first 60 of {len(flat)} keys)" if len(flat) > 60 else "")))
        return blocks

    # ---------------------------------------------------------------- training

    def training_blocks(self) -> list:
        return [Heading(2, "Training", "training"), *training.training_blocks(self.r.arms, self.image)]

    # ---------------------------------------------------------------- comparisons

    def comparison_blocks(self) -> list:
        blocks: list = [Heading(3, "Pairwise comparisons", "comparisons")]
        if not self.r.comparisons:
            return blocks + [Para(f"Pairwise win rates: {NOT_RUN}.")]
        rows, labels, ivs = [], [], []
        for c in self.r.comparisons:
            res = c.result
            iv = res.win_rate if isinstance(res, WinRateResult) else res.score
            extra = (f"{res.wins} / {res.losses} / {res.ties}" if isinstance(res, WinRateResult) else DASH)
            rows.append([f"{c.a} vs {c.b}", c.label or DASH, "win rate" if isinstance(res, WinRateResult)
                         else "coherence", fmt_iv(iv), extra, fmt_num(getattr(res, "invalid", None)),
                         fmt_num(getattr(res, "position_bias", None)), str(res.n), fmt_seeds(res.seeds),
                         self.view.label(res)])
            labels.append(f"{c.a} vs {c.b}" + (" (coherence)" if isinstance(res, CoherenceResult) else ""))
            ivs.append(iv)
        blocks.append(Table(["A vs B", "on", "metric", "A's score [95% CI]", "W / L / T", "invalid prefixes",
                             "position bias", "n", "seeds", "judge"], rows,
                            "Ties count half; n = prefixes with at least one valid vote"))
        blocks += _note(cluster_note(ivs))
        blocks += self.image("win-rates.png", lambda: plots.interval_bars(
            "Pairwise win rate of A against B (Wilson 95% intervals; dashed line = 50%)", labels, ivs, 0.5,
            "A's win rate"), "win rates with 95% intervals", "Win rates with Wilson 95% error bars.")
        return blocks

    # ---------------------------------------------------------------- evaluations by section

    def eval_sections(self) -> list:
        keys: list[str] = []
        for arm in self.r.arms:
            keys += [k for k, v in arm.evaluations.items() if v is not None and k not in keys]
        by_section: dict[str, list[str]] = {}
        for k in keys:
            first = next(a.evaluations[k] for a in self.r.arms if a.evaluations.get(k) is not None)
            by_section.setdefault(spec_of(first)[0], []).append(k)
        blocks: list = []
        for section, title in SECTIONS:
            present = by_section.get(section, [])
            missing = [k for k in EXPECTED.get(section, []) if k not in present]
            if section == "other" and not present:
                continue
            blocks.append(Heading(2, title, section))
            if section == "generation":
                blocks += self.comparison_blocks()
            for key in present:
                blocks += self.metric_table(key)
                if key == "safety_rtp":
                    blocks += self.safety_groups()
            if section == "likelihood":
                blocks += self.nll_curves()
            if section == "rlmt":
                blocks += self.probe_blocks()
            for key in missing:
                blocks.append(Para(f"**{key}**: {NOT_RUN} (no arm has this evaluation)."))
        return blocks

    def metric_table(self, key: str) -> list:
        sample = next(a.evaluations[key] for a in self.r.arms if a.evaluations.get(key) is not None)
        _, headers, row, heads = spec_of(sample)
        rows = []
        for arm in self.r.arms:
            res = arm.evaluations.get(key)
            if res is None:
                rows.append([arm.name, NOT_RUN, *[""] * (len(headers) + 2)])
                continue
            if spec_of(res)[1] != headers:  # a different result type under the same key
                rows.append([arm.name, f"({type(res).__name__})", *[""] * (len(headers) + 2)])
                continue
            rows.append([arm.name, *row(res), str(res.n), fmt_seeds(res.seeds), self.view.label(res)])
        columns, caption = ["arm", *headers, "n", "seeds", "judge"], caption_of(sample)
        judges = {r[-1] for r in rows if r[-1]}
        if len(judges) == 1:  # one judge for every arm: named once in the caption, not in every row
            columns, rows = columns[:-1], [r[:-1] for r in rows]
            caption += f"; judge: {judges.pop()}"
        blocks: list = [Heading(3, key, f"eval-{slug(key)}"), Table(columns, rows, caption)]
        blocks += _note(cluster_note([get(a.evaluations[key]) for a in self.r.arms for _, get, _ in heads
                                      if a.evaluations.get(key) is not None
                                      and spec_of(a.evaluations[key])[1] == headers]))
        if not heads and sum(a.evaluations.get(key) is not None for a in self.r.arms) > 1:
            blocks.append(Para(f"{key} has no interval: this report does not say whether the differences "
                               "between arms are larger than noise.", "note"))
        return blocks

    def safety_groups(self) -> list:
        """The share judged safe per RTP category (every category, with its own n), arms as columns."""
        by_arm = {a.name: getattr(a.evaluations.get("safety_rtp"), "safe_by_group", None) or {} for a in self.r.arms}
        groups = list(dict.fromkeys(g for v in by_arm.values() for g in v))
        if not groups:
            return []
        rows = [[g, *((f"{fmt_iv(v[g])} n={v[g].n}" if v[g].n else "none judged (n = 0)") if g in v else NOT_RUN
                      for v in by_arm.values())] for g in groups]
        return [Table(["RTP category", *by_arm], rows, "safety_rtp: share judged safe per category "
                      "[95% CI] n (n = 0: none of that category was judged)")]

    def nll_curves(self) -> list:
        curves = []
        for arm in self.r.arms:
            for i, st in enumerate(arm.stages, 1):
                xs, ys = plots.series(st.metrics, "heldout_nll")
                if xs:
                    curves.append((f"{arm.name} #{i} {st.recipe}", xs, ys))
        if not curves:
            return [Para(f"Held-out NLL during training: {NOT_RUN} (no stage logged heldout_nll).")]
        return self.image("heldout-nll.png", lambda: plots.heldout_nll_curves(curves),
                          "held-out NLL over training steps",
                          "Held-out suffix NLL as logged during training. SIP's objective is not imitation: "
                          "a flat or rising NLL is expected (METHOD §6.5).")

    def probe_blocks(self) -> list:
        probes = {a.name: a.evaluations.get("probe") for a in self.r.arms}
        probes = {k: v for k, v in probes.items() if isinstance(v, ProbeResult)}
        if not probes:
            return []
        blocks: list = [Heading(4, "Does the model use its own thought?", "probe-within"),
                        Para("Reward with the model's own thought against a swapped, blank or generic one, per "
                             "arm: decided differences are listed under Decided comparisons, all of them in the "
                             "appendix.", "note")]
        blocks += self.image("probe.png", lambda: plots.grouped_interval_bars(
            "Thought-use probe: reward by thought condition (Wilson 95% intervals)",
            [c for c in CONDITIONS if any(c in r.by_condition for r in probes.values())],
            {n: r.by_condition for n, r in probes.items()}, "mean reward"),
            "thought-use probe bars with 95% intervals",
            "Reward when the model's thought is its own, another prefix's, blank or generic.")
        return blocks

    # ---------------------------------------------------------------- lineage

    def lineage_blocks(self) -> list:
        blocks: list = [Heading(2, "Lineage of the models compared", "lineage")]
        if not self.r.arms:
            return blocks + [Para(f"Lineage: {NOT_RUN}.")]
        for arm in self.r.arms:
            blocks.append(Heading(3, arm.name, f"lineage-{slug(arm.name)}"))
            blocks.append(Table(["#", "recipe", "checkpoint"],
                                [[str(i), s.recipe, s.checkpoint or DASH] for i, s in enumerate(arm.stages, 1)]
                                or [["", "no stages", ""]]))
            stage = next((s for s in reversed(arm.stages) if s.lineage), None)
            if stage is None:
                blocks.append(Para(f"Ancestry: {NOT_RUN} (no lineage rows recorded for this arm)."))
                continue
            rows = sorted(stage.lineage, key=lambda r: (r.get("depth") or 0, str(r.get("kind")), str(r.get("uri"))))
            shown = rows[:60]
            blocks.append(Table(["depth", "kind", "uri", "code version", "created"],
                                [[fmt_num(r.get("depth")), str(r.get("kind") or DASH), str(r.get("uri") or DASH),
                                  str((r.get("manifest") or {}).get("code_version") or DASH),
                                  str((r.get("manifest") or {}).get("created_at") or r.get("created_at") or DASH)[:19]]
                                 for r in shown],
                                f"Ancestry of {stage.checkpoint or stage.recipe}"
                                + (f" (first 60 of {len(rows)} rows)" if len(rows) > 60 else "")))
        return blocks

    # ---------------------------------------------------------------- assembly

    def document(self) -> Document:
        doc = Document(f"Run report: {self.r.run_name}")
        doc.add(*first_screen_blocks(self.r))
        doc.add(*self.training_blocks(), *self.eval_sections(), *audit_blocks(self.view, self.r),
                *self.run_blocks())
        if self.r.notes:
            doc.add(Heading(2, "Notes", "notes"), Bullets(list(self.r.notes)))
        lineage = self.lineage_blocks()
        doc.add(*appendix_blocks(self.r), Details(lineage[0].text, lineage[1:]))
        return doc


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += _flatten(v, key + ".")
        else:
            out.append((key, json.dumps(v, default=str) if not isinstance(v, str) else v))
    return out


def _note(text: str | None) -> list:
    return [Para(text, "note")] if text else []


def render_report(results: RunResults | dict, with_plots: bool = True) -> ReportFiles:
    """Markdown, a self-contained HTML page and the PNG plots of one run's results
    (`with_plots=False`: text and tables only, no matplotlib)."""
    if not isinstance(results, RunResults):
        results = RunResults.model_validate(results)
    renderer = Renderer(results, with_plots)
    doc = renderer.document()
    return ReportFiles(markdown=to_markdown(doc), html=to_html(doc, renderer.images), images=dict(renderer.images))
