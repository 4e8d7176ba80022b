"""Formatting of numbers and intervals (the verdicts are `headline`'s).

Non-overlap of two 95% intervals is a conservative test of a difference, so "intervals overlap"
means "not shown by this run at this n", never "equal".
"""

from __future__ import annotations

import math
from typing import Any

from sip_core.evaluation.stats import Interval

NOT_RUN = "not run"
DASH = "—"


def finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_num(x: Any, digits: int = 3) -> str:
    if x is None:
        return DASH
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if math.isfinite(x) else DASH
    return str(x)


def fmt_pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if finite_number(x) else DASH


def fmt_iv(iv: Interval | None) -> str:
    """'63.3% [54.7, 71.1]' (percent, Wilson 95%); n = 0 says so."""
    if iv is None:
        return NOT_RUN
    if iv.n == 0 or not math.isfinite(iv.estimate):
        return "no valid items (n = 0)"
    return f"{100 * iv.estimate:.1f}% [{100 * iv.low:.1f}, {100 * iv.high:.1f}]"


def fmt_seeds(seeds: list[int]) -> str:
    if not seeds:
        return DASH
    s = sorted(seeds)
    if len(s) > 2 and s == list(range(s[0], s[0] + len(s))):
        return f"{s[0]}–{s[-1]} ({len(s)})"
    return ", ".join(map(str, s)) if len(s) <= 8 else f"{', '.join(map(str, s[:6]))}, … ({len(s)})"


def cluster_note(ivs: list[Interval | None]) -> str | None:
    """'n = prefixes (clustered ...)' when every interval shown counts the same clustered unit;
    None when any does not (older results, or n counting independent draws)."""
    units = {iv.clusters for iv in ivs if iv is not None}
    if len(units) != 1 or None in units:
        return None
    return (f"n = {units.pop()} (intervals clustered: the repeated judge votes or samples of one item count once, "
            "not as independent draws).")


def overlaps(a: Interval, b: Interval) -> bool:
    return a.low <= b.high and b.low <= a.high


def has_items(iv: Interval | None) -> bool:
    return iv is not None and iv.n > 0 and math.isfinite(iv.estimate)
