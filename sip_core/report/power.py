"""How many items a comparison would need to be decided at the effect size a run observed.

Two standard normal-approximation sample-size formulas (alpha 0.05 two-sided, power 0.8):

- two arms, each measured on its own items (two-proportion z-test, Fleiss without continuity
  correction), items per arm:
      n = (z_{1-a/2} * sqrt(2 p(1-p)) + z_{1-b} * sqrt(p1(1-p1) + p2(1-p2)))^2 / (p1 - p2)^2,
      p = (p1 + p2) / 2
- one arm's pairwise win rate against 50% (one-sample proportion z-test; the two arms are judged
  on the same prefixes, so this is the paired design), prefixes:
      n = (z_{1-a/2} * sqrt(p0(1-p0)) + z_{1-b} * sqrt(p(1-p)))^2 / (p - p0)^2,  p0 = 0.5

The report decides a difference only when two 95% intervals do not overlap, which is stricter than
a z-test at alpha 0.05: read these numbers as a lower bound on what that rule needs.
"""

from __future__ import annotations

import math
from statistics import NormalDist

ALPHA, POWER = 0.05, 0.8
TWO_PROPORTION = "two-proportion z-test"
ONE_PROPORTION = "one-sample z-test against 50%, paired prefixes"
NOTE = ("Sample sizes: normal-approximation power formulas at α = 0.05 two-sided and power 0.8: two arms, "
        "n = (z₀.₉₇₅·√(2p̄(1−p̄)) + z₀.₈·√(p₁(1−p₁) + p₂(1−p₂)))² / (p₁ − p₂)² items per arm (two-proportion "
        "z-test); a pairwise score against 50%, n = (z₀.₉₇₅·0.5 + z₀.₈·√(p(1−p)))² / (p − 0.5)² prefixes "
        "(one-sample z-test). The report's rule (non-overlapping 95% intervals) is stricter than that test: read "
        "them as lower bounds.")


def _z(alpha: float, power: float) -> tuple[float, float]:
    return NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)


def _valid(*ps: float) -> bool:
    return all(isinstance(p, (int, float)) and math.isfinite(p) and 0.0 <= p <= 1.0 for p in ps)


def n_two_proportions(p1: float, p2: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Items per arm to separate proportions p1 and p2 (None: no difference, or not proportions)."""
    if not _valid(p1, p2) or p1 == p2:
        return None
    za, zb = _z(alpha, power)
    p = (p1 + p2) / 2
    root = za * math.sqrt(2 * p * (1 - p)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(root * root / (p1 - p2) ** 2)


def n_one_proportion(p: float, p0: float = 0.5, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Items (prefixes) to tell a proportion p from p0 (None: p == p0, or not proportions)."""
    if not _valid(p, p0) or p == p0:
        return None
    za, zb = _z(alpha, power)
    root = za * math.sqrt(p0 * (1 - p0)) + zb * math.sqrt(p * (1 - p))
    return math.ceil(root * root / (p - p0) ** 2)
