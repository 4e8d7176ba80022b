"""Generation quality: pairwise win rate of model A against model B under the quality judge (P2),
and coherence / repetition (P6 plus a plain distinct-4-gram statistic).

The caller generates continuations of the same held-out prefixes with both models (greedy:
`greedy_continuations`) and passes the texts; nothing here touches a model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import Field

from sip_core.config import JudgeConfig
from sip_core.evaluation.stats import EvalResult, Interval, clustered_interval, counting, judge_id, wilson_interval
from sip_core.llm.cache import failed_share, require_answers
from sip_core.judge.spec import JudgeSpec, judge_spec, verdict_share

EVAL_TEMPERATURE = 0.7  # METHOD §6.1: eval judge samples at T = 0.7, 8 seeds


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """An int n means seeds 0..n-1."""
    return list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]


def _check_lengths(*lists: Sequence) -> int:
    n = len(lists[0])
    if any(len(x) != n for x in lists):
        raise ValueError(f"inputs differ in length: {[len(x) for x in lists]}")
    return n


class WinRateResult(EvalResult):
    metric: str = "win_rate"
    wins: int = 0
    losses: int = 0
    ties: int = 0
    invalid: int = Field(0, description="prefixes with no valid vote (excluded from n)")
    win_rate: Interval = Field(description="per-prefix outcome (ties half), Wilson over prefixes")
    vote_win_rate: Interval = Field(description="A's share of the valid votes (seeds x orders) of each prefix, "
                                    "averaged over prefixes: the paper's mean over prompts x seeds when every vote "
                                    "parses; clustered by prefix (n = prefixes)")
    position_bias: float | None = Field(None, description="share of valid votes that went to Option 1")
    invalid_judgments: int = 0
    calls: int = 0
    per_prefix: list[float | None] = Field(default_factory=list, description="A's share of valid votes")


def _both_orders(spec: JudgeSpec, task: str, slots: tuple[str, str], prefixes: Sequence[str],
                 continuations_a: Sequence[str], continuations_b: Sequence[str], seeds: list[int],
                 temperature: float | None) -> tuple[list[tuple[int, bool]], list]:
    """One request per prefix x order (A first, then B first) x seed, and its (prefix index, A first)
    tag; a probs verdict is the expected vote, so it is asked once per order."""
    tags, requests = [], []
    for i, (a, b) in enumerate(zip(continuations_a, continuations_b)):
        for a_first in (True, False):
            first, second = (a, b) if a_first else (b, a)
            for s in seeds[:1] if spec.probs(task) else seeds:
                requests.append(spec.render(task, {"seed": s, "temperature": temperature}, prefix=prefixes[i],
                                            **{slots[0]: first, slots[1]: second}))
                tags.append((i, a_first))
    return tags, requests


def pairwise_win_rate(judge, cfg: JudgeConfig, prefixes: Sequence[str], continuations_a: Sequence[str],
                      continuations_b: Sequence[str], seeds: int | Sequence[int] = 8,
                      temperature: float | None = EVAL_TEMPERATURE) -> WinRateResult:
    """Win rate of A against B, judged with the quality prompt in both option orders for every
    seed (2 x len(seeds) judgments per prefix).

    Per prefix, A wins when it gets more valid votes than B, loses when it gets fewer, and the
    prefix is a tie when the votes split evenly. win_rate = (wins + ties / 2) / (wins + losses +
    ties), i.e. **ties count half**, with a Wilson 95% interval on that fractional count over
    prefixes. `vote_win_rate` keeps the vote shares; its interval is clustered by prefix
    (`clustered_interval`): a deterministic judge's seeds are copies, not independent votes.
    Prefixes whose judgments all failed to parse are excluded and counted in `invalid`.
    `judge` is a CachedLLM (`open_llm(cfg, "judge")`); `cfg.parse_retries` and `cfg.prefill`
    apply; `temperature` None keeps the prompt's default.
    """
    n = _check_lengths(prefixes, continuations_a, continuations_b)
    seeds = seed_list(seeds)
    spec = judge_spec(cfg)
    prompt = spec.prompt("quality")
    tags, requests = _both_orders(spec, "quality", ("option_1", "option_2"), prefixes, continuations_a,
                                  continuations_b, seeds, temperature)
    before = judge.calls
    judgments = judge.run_parsed(requests, cfg.parse_retries) if requests else []
    require_answers("win rate", judgments, failed_share(judge))  # all failed: no result at all, never a 0.5
    votes: list[list[float]] = [[] for _ in range(n)]  # A's share of each valid vote: 0/1, or P(A) for probs
    first_wins = valid = 0
    for (i, a_first), j in zip(tags, judgments):
        if not j.ok:
            continue
        first = verdict_share(j, "quality", 1)
        valid += 1
        first_wins += first
        votes[i].append(first if a_first else 1.0 - first)
    a_votes, b_votes = [sum(v) for v in votes], [len(v) - sum(v) for v in votes]
    wins = losses = ties = invalid = 0
    per_prefix: list[float | None] = []
    for a, b in zip(a_votes, b_votes):
        if a + b == 0:
            invalid += 1
            per_prefix.append(None)
            continue
        per_prefix.append(a / (a + b))
        tie = abs(a - b) < 1e-9
        wins, losses, ties = wins + (a > b and not tie), losses + (a < b and not tie), ties + tie
    decided = wins + losses + ties
    return WinRateResult(
        n=decided, seeds=seeds, judge=judge_id(judge), wins=wins, losses=losses, ties=ties, invalid=invalid,
        win_rate=counting(wilson_interval(wins + 0.5 * ties, decided), "prefixes"),
        vote_win_rate=clustered_interval(votes),
        position_bias=first_wins / valid if valid else None, invalid_judgments=len(judgments) - valid,
        calls=judge.calls - before, per_prefix=per_prefix,
        details={"temperature": temperature, "prompt": prompt.key, "judgments": len(judgments),
                 "verdict": spec.verdict, "tie_rule": "votes split evenly; ties count half"})


# --------------------------------------------------------------------------- repetition

_WORD = re.compile(r"\w+", re.UNICODE)


def distinct_ngram_ratio(text: str, n: int = 4) -> float | None:
    """Distinct n-grams / all n-grams over the lower-cased words (\\w+ runs) of `text`: 1.0 means
    no n-gram repeats, small values mean loops. None when the text has fewer than n words."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return None
    return len(set(grams)) / len(grams)


class RepetitionStats(EvalResult):
    metric: str = "distinct_4gram"
    mean_distinct: float | None = Field(None, description="mean distinct-n-gram ratio over texts with >= n words")
    too_short: int = 0
    ngram: int = 4


def repetition_stats(texts: Sequence[str], n: int = 4) -> RepetitionStats:
    values = [distinct_ngram_ratio(t, n) for t in texts]
    scored = [v for v in values if v is not None]
    return RepetitionStats(n=len(scored), ngram=n, too_short=len(values) - len(scored), metric=f"distinct_{n}gram",
                           mean_distinct=sum(scored) / len(scored) if scored else None)


class CoherenceResult(EvalResult):
    metric: str = "coherence"
    score: Interval = Field(description="A's mean P6 score (A less repetitive 1, TIE 0.5, B 0), per prefix "
                            "averaged over seeds and both orders, then over prefixes (clustered: n = prefixes)")
    invalid: int = Field(0, description="prefixes with no valid judgment (excluded from n)")
    invalid_judgments: int = 0
    repetition_a: RepetitionStats
    repetition_b: RepetitionStats


def coherence_eval(judge, cfg: JudgeConfig, prefixes: Sequence[str], continuations_a: Sequence[str],
                   continuations_b: Sequence[str], seeds: int | Sequence[int] = 8,
                   temperature: float | None = EVAL_TEMPERATURE, ngram: int = 4) -> CoherenceResult:
    """Coherence / repetition of A against B: the coherence prompt (which judges only which text
    repeats itself less) in both orders over the seeds, plus the plain distinct-n-gram ratio of
    each side's texts (no judge)."""
    n = _check_lengths(prefixes, continuations_a, continuations_b)
    seeds = seed_list(seeds)
    spec = judge_spec(cfg)
    prompt = spec.prompt("coherence")
    tags, requests = _both_orders(spec, "coherence", ("continuation_a", "continuation_b"), prefixes,
                                  continuations_a, continuations_b, seeds, temperature)
    judgments = judge.run_parsed(requests, cfg.parse_retries) if requests else []
    require_answers("coherence", judgments, failed_share(judge))
    votes: list[list[float]] = [[] for _ in range(n)]
    bad = 0
    for (i, a_first), j in zip(tags, judgments):
        if not j.ok:
            bad += 1
            continue
        score = {"A": 1.0, "B": 0.0, "TIE": 0.5}[j.value]
        votes[i].append(score if a_first else 1.0 - score)
    per_prefix = [sum(v) / len(v) for v in votes if v]
    return CoherenceResult(
        n=len(per_prefix), seeds=seeds, judge=judge_id(judge), score=clustered_interval(votes),
        invalid=n - len(per_prefix), invalid_judgments=bad,
        repetition_a=repetition_stats(continuations_a, ngram), repetition_b=repetition_stats(continuations_b, ngram),
        details={"temperature": temperature, "prompt": prompt.key})
