"""The report's first screen: the run's identity, the Judges box, the headline table, then the
decided comparisons in words and one line per metric family on what stays undecided.

    md = first_screen_markdown(results)   # what the lifecycle's Prefect artifact shows
"""

from __future__ import annotations

from collections.abc import Sequence

from sip_core.evaluation.stats import Interval
from sip_core.report.format import NOT_RUN, fmt_iv, fmt_num, has_items
from sip_core.report.headline import Decision, Metric, base_arm, decisions, interval_of, nll_of, shown_metrics
from sip_core.report.judge import JudgeView, circular, judges_box
from sip_core.report.markup import Bullets, Document, Heading, Para, Table, Toc, to_markdown
from sip_core.report.models import RunResults
from sip_core.report.power import NOTE, ONE_PROPORTION, TWO_PROPORTION, n_one_proportion, n_two_proportions

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LEGEND = ("Each cell: estimate [95% interval] n. **> X** marks a difference this run decides: the cell's arm is "
          "better than column X, the two intervals not overlapping (intervals clustered by item where an item has "
          "several judge votes or samples); vs base: the interval of the pairwise score excludes 50%. Unmarked "
          "differences are undecided, not equal. NLL has no interval and is never marked.")


def identity_line(results: RunResults) -> str:
    cfg = results.config
    parts = [f"Run **{results.run_name}**"]
    parts += [f"{k} {cfg[k]}" for k in ("preset", "policy", "data") if cfg.get(k)]
    if cfg.get("setting") == "safety":
        parts.append(f"safety setting, arms trained on the {cfg.get('pretrain_data')} partition")
    steps = [f"{k.removesuffix('_steps')} {cfg[k]}" for k in ("pretrain_steps", "sft_steps", "rlmt_steps")
             if cfg.get(k) is not None]
    if steps:
        parts.append("steps " + " / ".join(steps))
    parts.append(f"{len(results.arms)} arm(s)")
    if results.created_at:
        parts.append(f"rendered {results.created_at}")
    return " · ".join(parts) + "."


def verdicts_allowed(results: RunResults, metric: Metric) -> bool:
    return not (metric.judged and circular(results))


def _cell(iv: Interval | None, marks: list[str]) -> str:
    if iv is None:
        return NOT_RUN
    if not has_items(iv):
        return "no valid items (n = 0)"
    text = f"{fmt_iv(iv)} n={iv.n}"
    return text + (f" **> {', '.join(marks)}**" if marks else "")


def gate_of(result) -> str:
    return NOT_RUN if result is None or not hasattr(result, "passed") else ("PASSED" if result.passed else "FAILED")


def headline_table(results: RunResults, found: list[Decision] | None = None) -> Table:
    """Arms as columns, the key metrics as rows; decided differences marked in the better arm's cell."""
    found = decisions(results) if found is None else found
    letter = {a.name: LETTERS[i % 26] for i, a in enumerate(results.arms)}
    base = base_arm(results)
    rows = []
    for metric in shown_metrics(results):
        marks: dict[str, list[str]] = {}
        if verdicts_allowed(results, metric):
            for d in found:
                if d.metric is metric and d.decided:
                    loser = d.b if d.winner == d.a else d.a
                    marks.setdefault(d.winner, []).append(letter.get(loser, loser))
        row = [metric.label]
        for arm in results.arms:
            if metric.key == "heldout_nll":
                nll = nll_of(arm)
                row.append(f"{nll[0]:.3f} n={nll[1]}" if nll else NOT_RUN)
            elif metric.vs_base and arm.name == base:
                row.append("(the base model)")
            elif metric.vs_base and interval_of(results, metric, arm) is None:
                row.append("not compared with base" if base else "no base model arm")
            else:
                row.append(_cell(interval_of(results, metric, arm), sorted(marks.get(arm.name, []))))
        rows.append(row)
        if metric.key == "reward_gate":
            rows.append(["RLMT reward gate verdict",
                         *(gate_of(a.evaluations.get("reward_gate")) for a in results.arms)])
    headers = ["metric"] + [f"{letter[a.name]} · {a.name}" for a in results.arms]
    return Table(headers, rows or [["no arms"]], "Headline: every arm's key metrics (higher is better except NLL)",
                 anchor="headline")


def decided_sentence(d: Decision) -> str:
    m = d.metric
    if d.iv_b is None:
        loser = d.b if d.winner == d.a else d.a
        return (f"{m.label}: {d.a} {fmt_iv(d.iv_a)} (n = {d.iv_a.n}) against {d.b}: the interval excludes 50%, "
                f"so the judge prefers {d.winner} over {loser}.")
    who = f"{d.subject}: " if d.subject else ""
    win_iv, lose_iv = (d.iv_a, d.iv_b) if d.winner == d.a else (d.iv_b, d.iv_a)
    loser = d.b if d.winner == d.a else d.a
    word = "lower" if m.better == "lower" else "higher"
    return (f"{who}{m.label}: {d.winner} {fmt_iv(win_iv)} (n = {win_iv.n}) is {word} than {loser} "
            f"{fmt_iv(lose_iv)} (n = {lose_iv.n}); the intervals do not overlap.")


def _about(n: int) -> str:
    """n rounded to two significant digits: these are estimates, not targets."""
    digits = max(0, len(str(n)) - 2)
    return fmt_num(int(round(n, -digits)))


def power_phrase(undecided: Sequence[Decision]) -> str:
    """'; at the observed effect sizes they would need about 120 prefixes (median; 40–900) (formula)'."""
    needs = sorted(n for d in undecided if (n := needed(d)) is not None)
    flat = len(undecided) - len(needs)
    if not needs:
        text = ""
    else:
        median = needs[(len(needs) - 1) // 2]  # the lower median: a count of items, not an average
        low, high = _about(needs[0]), _about(needs[-1])
        spread = "" if low == high else f" (median; range {low}–{high})"
        unit = "prefixes" if all(d.iv_b is None for d in undecided) else "items per arm"
        formula = ONE_PROPORTION if all(d.iv_b is None for d in undecided) else TWO_PROPORTION
        text = f"; at the observed effect sizes they would need about {_about(median)} {unit}{spread} ({formula})"
    return text + (f"; {flat} show{'s' if flat == 1 else ''} no difference at all" if flat else "")


def needed(d: Decision) -> int | None:
    if d.iv_b is None:
        return n_one_proportion(d.iv_a.estimate)
    return n_two_proportions(d.iv_a.estimate, d.iv_b.estimate)


def family_lines(results: RunResults, found: list[Decision]) -> list[str]:
    families: dict[str, list[Decision]] = {}
    for d in found:
        families.setdefault(d.metric.family, []).append(d)
    lines = []
    for family, ds in families.items():
        undecided = [d for d in ds if not d.decided]
        ns = sorted({d.iv_a.n for d in ds} | {d.iv_b.n for d in ds if d.iv_b is not None})
        at = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
        withheld = "" if verdicts_allowed(results, ds[0].metric) or len(undecided) == len(ds) else \
            f" ({len(ds) - len(undecided)} decided but given no verdict: grading is circular)"
        lines.append(f"**{family}**: {len(undecided)} of {len(ds)} comparisons undecided at {at}{withheld}"
                     + (power_phrase(undecided) if undecided else "") + ".")
    if any(nll_of(a) for a in results.arms):
        lines.append("**likelihood**: held-out NLL has no interval here: its differences are neither decided nor "
                     "counted.")
    return lines


def decided_blocks(results: RunResults, found: list[Decision]) -> list:
    """The decided comparisons in words, then what stays undecided, family by family."""
    shown = [d for d in found if d.decided and verdicts_allowed(results, d.metric)]
    withheld = sum(d.decided for d in found if not verdicts_allowed(results, d.metric))
    blocks: list = [Heading(2, "Decided comparisons", "decided")]
    if shown:
        blocks.append(Bullets([decided_sentence(d) for d in shown]))
    else:
        blocks.append(Para("This run decides no comparison: every difference it measured is within the noise of "
                           "its intervals."))
    if withheld:
        blocks.append(Para(f"{withheld} judged difference(s) have non-overlapping intervals, but grading is "
                           "circular: no verdict is given on them (see Judges).", "warn"))
    lines = family_lines(results, found)
    if lines:
        blocks += [Heading(3, "Undecided, by metric family", "undecided"), Bullets(lines), Para(NOTE, "note")]
    return blocks


def first_screen_blocks(results: RunResults, found: list[Decision] | None = None) -> list:
    found = decisions(results) if found is None else found
    return [Para(identity_line(results)), judges_box(JudgeView(results.judge_audit), results),
            Heading(2, "Headline", "headline-heading"), headline_table(results, found), Para(LEGEND, "note"),
            *decided_blocks(results, found), Toc()]


def first_screen_markdown(results: RunResults | dict) -> str:
    """The first screen as Markdown (identity, Judges box, headline table, decided comparisons and
    the undecided counts): the lifecycle's Prefect artifact."""
    if not isinstance(results, RunResults):
        results = RunResults.model_validate(results)
    doc = Document(f"Run report: {results.run_name}")
    doc.add(*first_screen_blocks(results))
    return to_markdown(doc)

