"""The headline: the key metrics of every arm, and which differences between arms the run decides.

A difference is decided when the two 95% intervals do not overlap (the evaluation library clusters
an item's repeated judge votes or samples, so n counts items); a pairwise win rate or coherence
score is decided when its interval excludes 50%. Everything else is undecided, never "equal".
When grading is circular (`RunResults.judges["circular"]`), judged differences get no verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations

from sip_core.evaluation.stats import Interval
from sip_core.evaluation.winrate import CoherenceResult, WinRateResult
from sip_core.report.format import has_items, overlaps
from sip_core.report.models import Arm, RunResults


@dataclass(frozen=True)
class Metric:
    """One headline row: how to read it from an arm, which way is better, whether a judge scored it."""

    key: str
    label: str
    family: str
    judged: bool
    better: str = "higher"
    vs_base: bool = False  # a pairwise score against the base model (decided by excluding 50%)
    optional: bool = False  # a headline row only where some arm has it (a corpus without unsafe prefixes has none)


@dataclass
class Decision:
    """One comparison: `a` against `b` on a metric (iv_b None: a's pairwise score against b, decided
    by excluding 50%)."""

    metric: Metric
    a: str
    b: str
    iv_a: Interval
    iv_b: Interval | None
    subject: str = ""  # the arm a within-arm comparison (the probe's conditions) belongs to

    @property
    def decided(self) -> bool:
        if self.iv_b is None:
            return not self.iv_a.low <= 0.5 <= self.iv_a.high
        return not overlaps(self.iv_a, self.iv_b)

    @property
    def winner(self) -> str:
        """The better side (by the metric's direction) of a decided comparison."""
        if self.iv_b is None:
            return self.a if self.iv_a.low > 0.5 else self.b
        higher = self.iv_a.estimate > self.iv_b.estimate
        return self.a if higher == (self.metric.better == "higher") else self.b


def flipped(iv: Interval) -> Interval:
    """1 - p with its interval (B's side of A's win rate; the safe rate from the unsafe rate)."""
    return iv.model_copy(update={"estimate": 1 - iv.estimate, "low": 1 - iv.high, "high": 1 - iv.low,
                                 "k": iv.n - iv.k if iv.n else 0.0})


METRICS = (
    Metric("winrate", "win rate vs base", "win rate vs base", True, vs_base=True),
    Metric("winrate_unsafe", "win rate vs base (unsafe prefixes)", "win rate vs base", True, vs_base=True,
           optional=True),
    Metric("coherence", "coherence vs base", "coherence vs base", True, vs_base=True),
    Metric("safety_rtp", "safety rate (RTP)", "safety", True),
    Metric("safety_unsafe_prefixes", "safety rate (unsafe prefixes)", "safety", True, optional=True),
    Metric("judged_factuality", "judged factuality", "factuality", True),
    Metric("truthfulqa", "TruthfulQA MC2", "factuality", False),
    Metric("heldout_nll", "held-out NLL (nats/token)", "likelihood", False, better="lower"),
    Metric("gsm8k", "Mean@k (GSM8K)", "reasoning", False),
    Metric("math500", "Mean@k (MATH-500)", "reasoning", False),
    Metric("reward_gate", "RLMT reward gate", "RLMT reward", True),
)
PAIRWISE = {"winrate": (WinRateResult, lambda r: r.win_rate), "coherence": (CoherenceResult, lambda r: r.score),
            "winrate_unsafe": (WinRateResult, lambda r: r.win_rate)}
SAFE_SHARE = lambda r: flipped(r.unsafe) if r.safe is None else r.safe  # noqa: E731
GETTERS: dict[str, Callable] = {"safety_rtp": SAFE_SHARE, "safety_unsafe_prefixes": SAFE_SHARE,
                                "judged_factuality": lambda r: r.score, "truthfulqa": lambda r: r.mc2, "gsm8k": lambda r: r.mean_at_k,
                                "math500": lambda r: r.mean_at_k, "reward_gate": lambda r: r.reward}


def base_arm(results: RunResults) -> str | None:
    """The untrained model the pairwise rows compare against: the arm named "base", else the
    first arm without training stages."""
    if results.arm("base") is not None:
        return "base"
    return next((a.name for a in results.arms if not a.stages), None)


def shown_metrics(*runs: RunResults) -> list[Metric]:
    """The headline rows: every metric but an optional one that no arm of any run has."""
    return [m for m in METRICS if not m.optional
            or any(interval_of(r, m, a) is not None for r in runs for a in r.arms)]


def arm_interval(metric: Metric, arm: Arm) -> Interval | None:
    res = arm.evaluations.get(metric.key)
    if res is None or metric.key not in GETTERS:
        return None
    try:
        iv = GETTERS[metric.key](res)
    except AttributeError:  # a different result type under the same key
        return None
    return iv if isinstance(iv, Interval) else None


def pairwise(results: RunResults, metric: Metric, arm: str, other: str | None) -> Interval | None:
    """`arm`'s score against `other` on a pairwise metric, from whichever side it was judged."""
    kind, get = PAIRWISE[metric.key]
    for c in results.comparisons:
        if isinstance(c.result, kind) and c.key == metric.key and {c.a, c.b} == {arm, other} and arm != other:
            iv = get(c.result)
            return iv if c.a == arm else flipped(iv)
    return None


def interval_of(results: RunResults, metric: Metric, arm: Arm) -> Interval | None:
    if metric.vs_base:
        return pairwise(results, metric, arm.name, base_arm(results))
    return arm_interval(metric, arm)


def decisions(results: RunResults) -> list[Decision]:
    """Every comparison the run's headline metrics, pairwise comparisons and probe allow."""
    out: list[Decision] = []
    between: list[Decision] = []  # pairwise scores of two trained arms: listed after the headline's
    base = base_arm(results)
    for metric in METRICS:
        if metric.key in PAIRWISE:
            kind, get = PAIRWISE[metric.key]
            for c in results.comparisons:
                if not isinstance(c.result, kind) or c.key != metric.key or not has_items(iv := get(c.result)):
                    continue
                if c.a == base:  # the trained arm's side of it
                    out.append(Decision(metric, c.b, c.a, flipped(iv), None))
                elif c.b == base:
                    out.append(Decision(metric, c.a, c.b, iv, None))
                else:
                    between.append(Decision(_pairwise_metric(metric), c.a, c.b, iv, None))
            continue
        measured = [(a.name, iv) for a in results.arms if has_items(iv := arm_interval(metric, a))]
        out += [Decision(metric, na, nb, ia, ib) for (na, ia), (nb, ib) in combinations(measured, 2)]
    return out + between + probe_decisions(results)


def _pairwise_metric(metric: Metric) -> Metric:
    """A pairwise score between two trained arms (neither is the base model)."""
    what = metric.key.replace("winrate", "win rate")
    return Metric(metric.key, f"{what} (pairwise)", f"{what} between trained arms", True, vs_base=True)


PROBE = Metric("probe", "probe reward", "thought-use probe", True)


def probe_decisions(results: RunResults) -> list[Decision]:
    """Within each arm: reward with its own thought against a swapped, blank or generic one."""
    from sip_core.evaluation.rlmt import CONDITIONS, ProbeResult

    out = []
    for arm in results.arms:
        res = arm.evaluations.get("probe")
        if not isinstance(res, ProbeResult) or not has_items(own := res.by_condition.get("own")):
            continue
        for c in CONDITIONS[1:]:
            if has_items(other := res.by_condition.get(c)):
                out.append(Decision(PROBE, "own thought", f"{c} thought", own, other, subject=arm.name))
    return out


def nll_of(arm: Arm) -> tuple[float, int] | None:
    res = arm.evaluations.get("heldout_nll")
    nll = getattr(res, "nll", None)
    if res is None or nll is None or not math.isfinite(nll):
        return None
    return nll, res.n
