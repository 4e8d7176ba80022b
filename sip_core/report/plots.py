"""Report figures as PNG bytes (matplotlib's Agg canvas, no pyplot: no global state, no display)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from sip_core.evaluation.stats import Interval

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
ORIGINS = ("original", "rewrite", "rollout")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # the layout is already tight: a second "tight" pass doubles the cost
    return buf.getvalue()


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that have a finite `key` (rows without `step` use their index)."""
    xs, ys = [], []
    for i, row in enumerate(rows):
        y = _num(row.get(key))
        if y is not None:
            xs.append(_num(row.get("step")) if _num(row.get("step")) is not None else float(i))
            ys.append(y)
    return xs, ys


# (panel title, y label, [(key, legend label)]) in display order; a panel with no data is left out
PANELS = (
    ("Training loss", "loss", [("loss", "loss"), ("thought_nll", "thought NLL"), ("text_nll", "text NLL")]),
    ("DPO margin", "β-scaled margin", [("dpo_margin", "margin")]),
    ("Reward accuracy", "share margin > 0", [("reward_accuracy", "reward accuracy")]),
    ("Chosen candidate share", "share of kept sets", [(f"chosen_share_{o}", o) for o in ORIGINS]),
    ("RLMT reward", "mean reward", [("reward_mean", "reward")]),
    ("Held-out suffix NLL", "nats / token", [("heldout_nll", "held-out NLL")]),
)


def training_curves(title: str, rows: Sequence[dict]) -> bytes | None:
    """One figure per stage: every panel of PANELS that has data; None when no panel has."""
    panels = [(t, yl, [(k, lab, series(rows, k)) for k, lab in keys]) for t, yl, keys in PANELS]
    panels = [(t, yl, [s for s in ss if s[2][0]]) for t, yl, ss in panels]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = _figure(4.2 * cols, 3.0 * nrows + 0.3)
    height = 3.0 * nrows
    fig.suptitle(title, fontsize=12, y=1 - 0.08 / height, va="top", fontweight="bold")
    for i, (ptitle, ylabel, lines) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, i + 1)
        for j, (_, label, (xs, ys)) in enumerate(lines):
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, color=COLORS[j % len(COLORS)],
                    label=label)
        if ptitle.endswith("share"):
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(ptitle, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    # fixed margins: tight_layout costs a full extra draw per figure
    height += 0.3
    fig.subplots_adjust(left=0.8 / (4.2 * cols), right=0.98, bottom=0.55 / height, top=1 - 0.75 / height,
                        wspace=0.32, hspace=0.45)
    return _png(fig)


def heldout_nll_curves(curves: Sequence[tuple[str, Sequence[float], Sequence[float]]]) -> bytes | None:
    """Held-out suffix NLL over training steps, one line per (arm / stage)."""
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    fig = _figure(7.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for j, (label, xs, ys) in enumerate(curves):
        ax.plot(xs, ys, marker="o", markersize=3, color=COLORS[j % len(COLORS)], label=label)
    ax.set_title("Held-out suffix NLL during training (lower = closer imitation of the corpus)", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _err(iv: Interval) -> tuple[float, float, float]:
    est = iv.estimate if math.isfinite(iv.estimate) else (iv.low + iv.high) / 2
    return est, max(0.0, est - iv.low), max(0.0, iv.high - est)


def interval_bars(title: str, labels: Sequence[str], intervals: Sequence[Interval], reference: float | None = None,
                  xlabel: str = "") -> bytes | None:
    """Horizontal bars with 95% interval error bars (e.g. win rates, with the 50% line)."""
    if not labels:
        return None
    fig = _figure(8.0, 0.75 * len(labels) + 1.4)
    ax = fig.add_subplot(1, 1, 1)
    ests, lo, hi = zip(*(_err(iv) for iv in intervals))
    ys = list(range(len(labels)))[::-1]
    ax.barh(ys, ests, xerr=[lo, hi], color=COLORS[0], alpha=0.75, capsize=5, height=0.55)
    for y, iv, e in zip(ys, intervals, ests):
        ax.text(0.01, y + 0.36, f"{e:.1%} [{iv.low:.1%}, {iv.high:.1%}]  n={iv.n}", fontsize=8,
                va="center", ha="left")  # inside the axes: never clipped
    if reference is not None:
        ax.axvline(reference, color="black", linestyle="--", linewidth=1)
    ax.set_ylim(-0.5, len(labels) - 0.5 + 0.25)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def grouped_interval_bars(title: str, groups: Sequence[str], series_: dict[str, dict[str, Interval]],
                          ylabel: str = "") -> bytes | None:
    """Vertical bars per group (e.g. probe condition) and series (arm), with 95% error bars."""
    names = [s for s in series_ if series_[s]]
    if not names or not groups:
        return None
    fig = _figure(max(6.0, 1.6 * len(groups) * max(1, len(names)) / 2 + 2), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        xs, ests, lo, hi = [], [], [], []
        for g_i, g in enumerate(groups):
            iv = series_[name].get(g)
            if iv is None:
                continue
            e, l_, h_ = _err(iv)
            xs.append(g_i - 0.4 + width * (j + 0.5))
            ests.append(e)
            lo.append(l_)
            hi.append(h_)
        ax.bar(xs, ests, width=width * 0.95, yerr=[lo, hi], capsize=4, color=COLORS[j % len(COLORS)], alpha=0.8,
               label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    top = max((iv.high for s in names for iv in series_[s].values()), default=1.0)
    ax.set_ylim(0, min(1.0, max(0.05, top * 1.2)))  # small rewards stay readable
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


Line = tuple[str, Sequence[float], Sequence[float], str]  # (legend label, xs, ys, line style)


def panel_figure(title: str, panels: Sequence[tuple[str, str, Sequence[Line]]], stacked: int | None = None
                 ) -> bytes | None:
    """Side-by-side panels (title, y label, lines), one colour per stage across panels; panel
    `stacked` draws its lines as a stacked area (a composition). None when no panel has data."""
    panels = [(t, yl, [ln for ln in lines if ln[1]]) for t, yl, lines in panels]
    keep = [i for i, p in enumerate(panels) if p[2]]
    if not keep:
        return None
    fig = _figure(4.6 * len(keep), 3.4)
    fig.suptitle(title, fontsize=11, fontweight="bold")
    colors: dict[str, str] = {}
    for slot, i in enumerate(keep):
        ptitle, ylabel, lines = panels[i]
        ax = fig.add_subplot(1, len(keep), slot + 1)
        if i == stacked:
            ax.stackplot(lines[0][1], *[ln[2] for ln in lines], labels=[ln[0] for ln in lines],
                         colors=COLORS[:len(lines)], alpha=0.7)
            ax.set_ylim(0, 1)
        else:
            for label, xs, ys, style in lines:
                stage = label.split(" · ")[0]
                color = colors.setdefault(stage, COLORS[len(colors) % len(COLORS)])
                ax.plot(xs, ys, linestyle=style, marker="o" if len(xs) < 30 else None, markersize=3, color=color,
                        label=label)
        ax.set_title(ptitle, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.7 / (4.6 * len(keep)), right=0.98, bottom=0.16, top=0.8, wspace=0.3)
    return _png(fig)
