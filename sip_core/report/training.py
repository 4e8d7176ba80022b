"""The report's Training section: progress, cost and health per stage (means over all steps and
over the last window), the SIP candidate pool beside the rollout-chosen rate, the cross-stage
curves (`curves`) and each stage's training curves.

Stage metrics are the rows of the stage's metrics.parquet; a column an older run did not log
reads "not logged" (pool columns) or "—" (the rest), never an error.
"""

from __future__ import annotations

from collections.abc import Callable

import sip_core.report.plots as plots
from sip_core.report.curves import aggregate, curve_blocks, last_window, pool_composition
from sip_core.report.format import DASH, NOT_RUN, fmt_num, fmt_pct
from sip_core.report.markup import Para, Table, slug
from sip_core.report.models import Arm, Stage

NOT_LOGGED = "not logged"
# A stage that logs any of these judged its candidate pools (SIP): it gets a row in the pool table.
POOL_KEYS = ("chosen_share_rollout", "pool_size", "pool_rewrites", "tie_break_seed")
POOL_CAPTION = ("SIP candidate pool per stage: read the rollout-chosen rate against the pool it was chosen from "
                "(an indifferent judge picks a rollout in proportion to the rollouts in the pool, METHOD §4.5)")


def progress_row(arm: Arm, i: int, st: Stage) -> list[str]:
    rows = st.metrics
    steps = plots.series(rows, "step")[1] or [float(len(rows))]
    return [arm.name, f"{i}. {st.recipe}", fmt_num(int(max(steps))),
            aggregate(rows, "loss"), aggregate(rows, "dpo_margin"), aggregate(rows, "reward_accuracy"),
            aggregate(rows, "reward_mean"), _first_last(rows, "heldout_nll")]


def cost_row(arm: Arm, i: int, st: Stage) -> list[str]:
    rows = st.metrics
    calls, hits = _total(rows, "judge_calls"), _total(rows, "judge_cache_hits")
    return [arm.name, f"{i}. {st.recipe}", fmt_num(calls),
            f"{fmt_num(hits)} ({fmt_pct(hits / (calls + hits))})" if calls is not None and hits else fmt_num(hits),
            fmt_num(_total(rows, "skipped_all_equal")), fmt_num(_total(rows, "invalid_judgments")),
            fmt_num(_total(rows, "no_signal_groups")), fmt_num(_total(rows, "format_failures")),
            fmt_num(_mean(rows, "gen_tokens_per_s"), 1),
            " / ".join(fmt_num(_total(rows, f"time_{k}_s"), 1) for k in ("generate", "judge", "update")),
            f"{_last(rows, 'lr'):.1e}" if _last(rows, "lr") is not None else DASH,
            fmt_num(_last(rows, "grad_norm"))]


def pool_row(arm: Arm, i: int, st: Stage) -> list[str] | None:
    """The rollout-chosen rate next to the pool composition; None for a stage that judged no pools."""
    rows = st.metrics
    if not any(k in r for r in rows for k in POOL_KEYS):
        return None
    rollout = _vals(rows, "chosen_share_rollout")
    chance = pool_composition(rows)[3]
    return [arm.name, f"{i}. {st.recipe}",
            fmt_pct(sum(rollout) / len(rollout)) if rollout else NOT_LOGGED,
            fmt_pct(_mean_of(last_window(rollout))) if rollout else NOT_LOGGED,
            fmt_pct(_mean_of(chance)) if chance else NOT_LOGGED,
            " / ".join(fmt_pct(_mean_of(v)) if (v := _vals(rows, f"chosen_share_{o}")) else DASH
                       for o in ("original", "rewrite")),
            _range(rows, "pool_size"), _rewrite_sets(rows), _range(rows, "tie_break_seed")]


def _mean_of(v: list[float]) -> float:
    return sum(v) / len(v)


def training_blocks(arms: list[Arm], image: Callable[..., list]) -> list:
    """The Training section; `image(name, make, alt, caption)` adds a figure (the renderer's)."""
    progress, cost, pool, figures = [], [], [], []
    shown: dict[str, list[list[str]]] = {}  # checkpoint -> its rows: a stage two arms share is shown once
    for arm in arms:
        for i, st in enumerate(arm.stages, 1):
            if st.checkpoint in shown:
                for row in shown[st.checkpoint]:
                    row[0] += f" (= {arm.name})"
                continue
            if not st.metrics:
                progress.append([arm.name, f"{i}. {st.recipe}", "no metrics logged", *[""] * 5])
                continue
            rows_of_stage = [progress_row(arm, i, st), cost_row(arm, i, st)]
            progress.append(rows_of_stage[0])
            cost.append(rows_of_stage[1])
            if (row := pool_row(arm, i, st)) is not None:
                pool.append(row)
                rows_of_stage.append(row)
            if st.checkpoint:
                shown[st.checkpoint] = rows_of_stage
            name, rows = f"{arm.name} #{i} {st.recipe}", st.metrics
            figures += image(f"training-{slug(arm.name)}-{i}-{slug(st.recipe)}.png",
                             lambda name=name, rows=rows: plots.training_curves(name, rows),
                             f"training curves: {name}", f"Training curves of {name} (per logged step).")
    if not progress:
        return [Para(f"Training metrics: {NOT_RUN}.")]
    blocks = [Table(["arm", "stage", "steps", "loss", "DPO margin", "reward accuracy", "RLMT reward",
                     "held-out NLL first → last"], progress,
                    "Progress per stage: mean over all logged steps · mean over the last quarter of them"),
              Table(["arm", "stage", "judge calls", "cache hits", "skipped all-equal", "invalid judgments",
                     "no-signal groups", "format failures", "gen tokens/s (mean)",
                     "time generate / judge / update (s)", "last lr", "last grad norm"], cost,
                    "Cost and health per stage (totals over steps)")]
    if pool:
        blocks.append(Table(["arm", "stage", "rollout chosen (mean over steps)", "rollout chosen (last ¼ mean)",
                             "rollout share of pool (chance)", "original / rewrite chosen (mean)",
                             "pool size (candidates per set)", "sets with a rewrite in the pool", "tie-break seed"],
                            pool, POOL_CAPTION))
    return blocks + curve_blocks(arms, image) + figures


def _vals(rows: list[dict], key: str) -> list[float]:
    return plots.series(rows, key)[1]


def _first_last(rows: list[dict], key: str, pct: bool = False) -> str:
    v = _vals(rows, key)
    if not v:
        return DASH
    f = fmt_pct if pct else fmt_num
    return f(v[0]) if len(v) == 1 else f"{f(v[0])} → {f(v[-1])}"


def _total(rows: list[dict], key: str) -> float | int | None:
    v = _vals(rows, key)
    if not v:
        return None
    s = sum(v)
    return int(s) if all(float(x).is_integer() for x in v) else s


def _mean(rows: list[dict], key: str) -> float | None:
    v = _vals(rows, key)
    return sum(v) / len(v) if v else None


def _last(rows: list[dict], key: str) -> float | None:
    v = _vals(rows, key)
    return v[-1] if v else None


def _integral(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _range(rows: list[dict], key: str) -> str:
    """One value when every step logged the same one, else 'min–max'; 'not logged' when absent."""
    v = _vals(rows, key)
    if not v:
        return NOT_LOGGED
    low, high = _integral(min(v)), _integral(max(v))
    return fmt_num(low) if low == high else f"{fmt_num(low)}–{fmt_num(high)}"


def _rewrite_sets(rows: list[dict]) -> str:
    """Sets whose pool held a rewrite, over all steps, and their share of the sets judged."""
    rewrites, sets = _total(rows, "pool_rewrites"), _total(rows, "sets")
    if rewrites is None:
        return NOT_LOGGED
    if not sets:
        return fmt_num(rewrites)
    return f"{fmt_num(rewrites)} of {fmt_num(sets)} ({fmt_pct(rewrites / sets)})"
