"""How often the training judge and the evaluation judge agree on the same held-out pairs.

Each judge compares the same (A, B) continuation pairs with the quality prompt in both option
orders over the same seeds (`pairwise_win_rate`); per pair its verdict is A, B or a tie (its votes
split evenly). The judges agree on a pair when their verdicts are equal. Pairs where either judge
has no valid vote are left out and counted (`invalid`): a failure is never a verdict. The rate has
a Wilson 95% interval over pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from sip_core.evaluation.stats import EvalResult, wilson_interval
from sip_core.evaluation.winrate import pairwise_win_rate


class AgreementResult(EvalResult):
    metric: str = "judge_agreement"
    agree: int = 0
    rate: float | None = Field(None, description="agree / n")
    low: float | None = None
    high: float | None = None
    invalid: int = Field(0, description="pairs either judge left without a valid vote (excluded from n)")
    training: str | None = Field(None, description="the training judge's model id")
    evaluation: str | None = Field(None, description="the evaluation judge's model id")
    verdicts: list[tuple[str | None, str | None]] = Field(default_factory=list, description="(training, evaluation) "
                                                          "verdict per pair: A, B, tie, or None (no valid vote)")


def _verdict(share: float | None) -> str | None:
    if share is None:
        return None
    return "tie" if abs(share - 0.5) < 1e-9 else "A" if share > 0.5 else "B"


def judge_agreement(training_judge, training_cfg, evaluation_judge, evaluation_cfg, prefixes: Sequence[str],
                    continuations_a: Sequence[str], continuations_b: Sequence[str],
                    seeds: int | Sequence[int] = 1) -> AgreementResult:
    """Both judges' verdicts on the same pairs (`continuations_a[i]` vs `continuations_b[i]` after
    `prefixes[i]`) and how often they agree. Each judge runs with its own config (prompt options,
    parse retries, verdict mode)."""
    runs = [pairwise_win_rate(judge, cfg, prefixes, continuations_a, continuations_b, seeds)
            for judge, cfg in ((training_judge, training_cfg), (evaluation_judge, evaluation_cfg))]
    verdicts = [(_verdict(t), _verdict(e)) for t, e in zip(runs[0].per_prefix, runs[1].per_prefix)]
    decided = [(t, e) for t, e in verdicts if t is not None and e is not None]
    agree = sum(t == e for t, e in decided)
    interval = wilson_interval(agree, len(decided)) if decided else None
    return AgreementResult(
        n=len(decided), seeds=runs[0].seeds, judge=runs[1].judge, agree=agree,
        rate=round(agree / len(decided), 4) if decided else None,
        low=round(interval.low, 4) if interval else None, high=round(interval.high, 4) if interval else None,
        invalid=len(verdicts) - len(decided), training=runs[0].judge, evaluation=runs[1].judge, verdicts=verdicts,
        details={"calls": {"training": runs[0].calls, "evaluation": runs[1].calls},
                 "rule": "per pair: A, B or tie from both option orders x seeds; agree = same verdict"})
