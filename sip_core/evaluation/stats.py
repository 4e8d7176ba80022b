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


class EvalResult(BaseModel):
    """Fields every evaluation result has."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    n: int = Field(description="items the headline number is computed over")
    seeds: list[int] = Field(default_factory=list, description="judge (or sampling) seeds used")
    judge: str | None = Field(None, description="judge.backend.model_id; None when no judge is involved")
    audit: dict[str, Any] | None = Field(None, description="the judge audit this ran under (caller fills it)")
    details: dict[str, Any] = Field(default_factory=dict)


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
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return Interval(estimate=p, low=max(0.0, center - half), high=min(1.0, center + half), k=k, n=n, z=z)


def bounded_mean_interval(values: Sequence[float], z: float = 1.96) -> Interval:
    """Mean of values in [0, 1] with a Wilson interval on their sum (conservative, see
    `wilson_interval`). Used for per-item scores such as factuality 1 / 0.5 / 0 or Mean@k."""
    vals = [float(v) for v in values]
    if any(v < -1e-12 or v > 1 + 1e-12 for v in vals):
        raise ValueError("bounded_mean_interval needs values in [0, 1]")
    iv = wilson_interval(min(float(sum(vals)), float(len(vals))), len(vals), z)
    return iv.model_copy(update={"method": "wilson-on-sum"})


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
