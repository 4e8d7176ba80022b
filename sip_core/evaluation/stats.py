"""Intervals, estimators and the result models every evaluation returns.

Every result carries its numbers and the metadata needed to read them: how many items (`n`),
which judge seeds, which judge (`judge.backend.model_id`), and an `audit` slot that the caller
fills with the judge-audit result the evaluation ran under (`attach_audit`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Interval(BaseModel):
    """A proportion (or a mean of values in [0, 1]) with its confidence interval."""

    model_config = ConfigDict(extra="forbid")

    estimate: float
    low: float
    high: float
    k: float = Field(description="successes (may be fractional: ties or bounded scores)")
    n: int
    z: float = 1.96
    method: str = "wilson"
    clusters: str | None = Field(None, description="what n counts when the repeated judge votes or samples of "
                                 "one item were reduced to one value per item first (e.g. 'prefixes'); None: "
                                 "n counts draws taken as independent")
    effective_n: float | None = Field(None, description="clustered intervals: the number of independent votes "
                                      "the between-item spread is worth (Kish effective sample size)")


class EvalResult(BaseModel):
    """Fields every evaluation result has."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    n: int = Field(description="items the headline number is computed over")
    seeds: list[int] = Field(default_factory=list, description="judge (or sampling) seeds used")
    judge: str | None = Field(None, description="judge.backend.model_id; None when no judge is involved")
    audit: dict[str, Any] | None = Field(None, description="the judge audit this ran under (caller fills it)")
    details: dict[str, Any] = Field(default_factory=dict)


def _wilson_bounds(p: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score bounds for a proportion p observed over n (possibly effective, fractional) draws."""
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def wilson_interval(k: float, n: int, z: float = 1.96) -> Interval:
    """Wilson score interval for k successes out of n (z = 1.96: 95%).

    k may be fractional (ties counted half, or a sum of scores in [0, 1]); for values bounded in
    [0, 1] the variance is at most p(1 - p), so the interval is then conservative. n = 0 gives
    estimate NaN and the uninformative interval [0, 1].
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Interval(estimate=math.nan, low=0.0, high=1.0, k=k, n=0, z=z)
    low, high = _wilson_bounds(k / n, n, z)
    return Interval(estimate=k / n, low=low, high=high, k=k, n=n, z=z)


def counting(iv: Interval, clusters: str) -> Interval:
    """The same interval, marked as one whose n counts `clusters` (e.g. "prefixes"): the caller
    reduced each item's repeated votes or samples to one value before computing it."""
    return iv.model_copy(update={"clusters": clusters})


def bounded_mean_interval(values: Sequence[float], z: float = 1.96) -> Interval:
    """Mean of values in [0, 1] with a Wilson interval on their sum (conservative, see
    `wilson_interval`). Used for per-item scores such as factuality 1 / 0.5 / 0 or Mean@k."""
    vals = [float(v) for v in values]
    if any(v < -1e-12 or v > 1 + 1e-12 for v in vals):
        raise ValueError("bounded_mean_interval needs values in [0, 1]")
    iv = wilson_interval(min(float(sum(vals)), float(len(vals))), len(vals), z)
    return iv.model_copy(update={"method": "wilson-on-sum"})


def clustered_interval(votes: Sequence[Sequence[float]], clusters: str = "prefixes", z: float = 1.96) -> Interval:
    """Mean of votes in [0, 1] that come in clusters (one prefix's judge votes over seeds and
    option orders), clustered by item: each item's mean counts once and n = items with a vote.

    The interval is Wilson's at the effective sample size n_eff = m * p(1 - p) / s^2 (m items,
    s^2 the sample variance of the item means), clamped to [m, all votes]. Why this and not
    the two simpler options: Wilson on the item means with n = m assumes the worst case (every
    item's votes identical), so independent votes would get an interval sqrt(votes per item)
    times too wide; a bootstrap over items collapses to a point when every item agrees (a
    100% win rate on 8 prefixes would claim certainty) and needs a seed. Measuring the spread
    of the item means gives n_eff = m when the votes of one item are copies (a deterministic
    judge) and n_eff = all votes when they are independent. The clamp: item means lie in
    [0, 1], so their variance is at most p(1 - p) (n_eff >= m up to sampling noise), and no
    interval claims more than the votes cast. With p in {0, 1} or a single item the spread says
    nothing, so n_eff = m. With few items s^2 is itself noisy; n says how many there were.
    """
    means = [sum(float(v) for v in vs) / len(vs) for vs in votes if len(vs)]
    if any(v < -1e-12 or v > 1 + 1e-12 for vs in votes for v in vs):
        raise ValueError("clustered_interval needs votes in [0, 1]")
    m, cast = len(means), sum(len(vs) for vs in votes)
    if m == 0:
        return Interval(estimate=math.nan, low=0.0, high=1.0, k=0.0, n=0, z=z, method="wilson-clustered",
                        clusters=clusters)
    p = min(1.0, max(0.0, sum(means) / m))
    spread = sum((y - p) ** 2 for y in means) / (m - 1) if m > 1 else None
    if spread is None or p * (1 - p) == 0:
        n_eff = float(m)
    elif spread == 0:
        n_eff = float(cast)
    else:
        n_eff = min(float(cast), max(float(m), m * p * (1 - p) / spread))
    low, high = _wilson_bounds(p, n_eff, z)
    return Interval(estimate=p, low=low, high=high, k=sum(means), n=m, z=z, method="wilson-clustered",
                    clusters=clusters, effective_n=n_eff)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), for n samples of
    which c are correct. Needs k <= n."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def audit_dict(report: Any) -> dict[str, Any] | None:
    """A judge-audit result (AuditReport dataclass, pydantic model or dict) as a plain dict."""
    if report is None:
        return None
    if isinstance(report, dict):
        return dict(report)
    if dataclasses.is_dataclass(report):
        return dataclasses.asdict(report)
    if isinstance(report, BaseModel):
        return report.model_dump(mode="json")
    raise TypeError(f"cannot record an audit of type {type(report).__name__}")


def attach_audit(result: EvalResult, report: Any) -> EvalResult:
    """Record the judge audit this result ran under (returns the same object)."""
    result.audit = audit_dict(report)
    return result


def judge_id(judge: Any) -> str | None:
    """judge.backend.model_id of a CachedLLM (None for no judge)."""
    if judge is None:
        return None
    backend = getattr(judge, "backend", judge)
    return getattr(backend, "model_id", None)
