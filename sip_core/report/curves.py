"""Training curves across stages, from each stage's metrics.parquet rows, and the aggregates the
training tables show (the mean over all logged steps and over the last window, not a single
first or last step, which is one noisy batch).

Three figures: the rollout-chosen rate beside the pool it was chosen from; the DPO margin and
reward accuracy; the RLMT reward and the groups without signal.
"""

from __future__ import annotations

from collections.abc import Callable

import sip_core.report.plots as plots
from sip_core.report.format import DASH, fmt_num, fmt_pct
from sip_core.report.models import Arm, Stage


def last_window(values: list[float]) -> list[float]:
    """The last quarter of the logged steps (at least one)."""
    return values[-max(1, len(values) // 4):]


def aggregate(rows: list[dict], key: str, pct: bool = False) -> str:
    """'mean 0.412 · last ¼ 0.530' over the steps that logged `key`."""
    v = plots.series(rows, key)[1]
    if not v:
        return DASH
    f = fmt_pct if pct else fmt_num
    tail = last_window(v)
    return f"mean {f(sum(v) / len(v))} · last ¼ {f(sum(tail) / len(tail))}"


def distinct_stages(arms: list[Arm]) -> list[tuple[str, Stage]]:
    """Each trained stage once (arms share stages: base→SIP is the start of base→SIP→SFT→RLMT)."""
    seen, out = set(), []
    for arm in arms:
        for i, st in enumerate(arm.stages, 1):
            key = st.checkpoint or f"{arm.name}#{i}"
            if key not in seen and st.metrics:
                seen.add(key)
                out.append((f"{arm.name} #{i} {st.recipe}", st))
    return out


def pool_composition(rows: list[dict]) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per step, the share of a candidate pool that is the original, a rewrite, a rollout: the
    rate at which an indifferent judge would choose each (METHOD §4.5)."""
    xs, orig, rew, roll = [], [], [], []
    for i, r in enumerate(rows):
        size, sets, rewrites = (plots._num(r.get(k)) for k in ("pool_size", "sets", "pool_rewrites"))
        if not size or not sets or rewrites is None:
            continue
        rewrite = rewrites / sets
        xs.append(plots._num(r.get("step")) or float(i))
        orig.append(1 / size)
        rew.append(rewrite / size)
        roll.append(max(0.0, size - 1 - rewrite) / size)
    return xs, orig, rew, roll


def running_mean(ys: list[float], window: int) -> list[float]:
    """The mean of each step's last `window` values (fewer at the start)."""
    return [sum(ys[max(0, i + 1 - window):i + 1]) / (i + 1 - max(0, i + 1 - window)) for i in range(len(ys))]


def _smoothed(stages: list[tuple[str, Stage]], key: str, label: str) -> list[plots.Line]:
    """A running mean over a tenth of the steps (at least 3): one step judges few sets, so its rate is noisy."""
    out = []
    for name, st in stages:
        xs, ys = plots.series(st.metrics, key)
        out.append((f"{name} · {label}", xs, running_mean(ys, max(3, len(ys) // 10)), "-"))
    return out


def _lines(stages: list[tuple[str, Stage]], keys: list[tuple[str, str, str]]) -> list[plots.Line]:
    return [(f"{name} · {label}", *plots.series(st.metrics, key), style)
            for name, st in stages for key, label, style in keys]


def curve_blocks(arms: list[Arm], image: Callable[..., list]) -> list:
    """The three cross-stage figures (only those with data); `image` is the renderer's."""
    stages = distinct_stages(arms)
    pool = [(n, st) for n, st in stages if plots.series(st.metrics, "chosen_share_rollout")[0]]
    chance = [(f"{n} · rollout share of pool (chance)", comp[0], comp[3], "--")
              for n, st in pool for comp in [pool_composition(st.metrics)]]
    first = pool_composition(pool[0][1].metrics) if pool else ([], [], [], [])
    composition = [("original", first[0], first[1], "-"), ("rewrite", first[0], first[2], "-"),
                   ("rollout", first[0], first[3], "-")]
    blocks = image("rollout-chosen.png", lambda: plots.panel_figure(
        "SIP: rollout chosen vs the pool it was chosen from",
        [("Rollout-chosen rate (dotted: per step; dashed: chance)", "share of kept sets",
          _lines(pool, [("chosen_share_rollout", "rollout chosen per step", ":")])
          + _smoothed(pool, "chosen_share_rollout", "rollout chosen, running mean") + chance),
         ("Pool composition (first SIP stage)", "share of candidates", composition)], stacked=1),
        "rollout-chosen rate over steps with pool composition",
        "The rollout-chosen rate per step against the rollouts' share of the candidate pool, the rate an "
        "indifferent judge would give; right: what the pool was made of.")
    dpo = [(n, st) for n, st in stages if plots.series(st.metrics, "dpo_margin")[0]]
    blocks += image("dpo.png", lambda: plots.panel_figure(
        "DPO: margin and reward accuracy",
        [("DPO margin", "β-scaled margin", _lines(dpo, [("dpo_margin", "margin", "-")])),
         ("Reward accuracy", "share margin > 0", _lines(dpo, [("reward_accuracy", "accuracy", "-")]))]),
        "DPO margin and reward accuracy over steps", "Implicit-reward margin of chosen over rejected and the share "
        "of pairs where it is positive, per logged step.")
    rl = [(n, st) for n, st in stages if plots.series(st.metrics, "reward_mean")[0]]
    blocks += image("rlmt.png", lambda: plots.panel_figure(
        "RLMT: reward and groups without signal",
        [("Mean reward", "reward", _lines(rl, [("reward_mean", "reward", "-")])),
         ("No-signal groups", "groups per step", _lines(rl, [("no_signal_groups", "no-signal groups", "-")]))]),
        "RLMT reward and no-signal groups over steps", "A group whose samples all score the same gives no "
        "gradient (DrGRPO advantages are zero).")
    return blocks
