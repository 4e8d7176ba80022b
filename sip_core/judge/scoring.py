"""Scoring candidate sets (method §4): quality by pairwise judgments, safety pointwise, factuality
against the original suffix, combined into one score; best and worst picked for Online DPO.

The original suffix is factuality's reference (METHOD §4.4), so it is never judged on factuality:
against itself it would always score 1 and win by construction. Its score is the weighted sum of
its other criteria, scaled up to the full weight so it stays on the others' scale; with factuality
as the only criterion it has no score and is neither chosen nor rejected.

All requests of all sets go to the cached runner at once, so they are issued concurrently.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

from sip_core.config import JudgeConfig
from sip_core.llm.cache import CachedLLM, Judgment
from sip_core.judge.spec import JudgeSpec, expected_verdict, judge_spec, verdict_share
from sip_core.llm.types import LLMRequest


REFERENCE_ORIGIN = "original"


@dataclass
class Candidate:
    text: str
    origin: str  # original | rewrite | rollout


@dataclass
class CandidateSet:
    set_id: str
    prefix: str
    candidates: list[Candidate]
    reference: str | None = None  # the original suffix, for factuality

    def reference_index(self) -> int | None:
        """Where the original suffix (factuality's reference and the quality pivot) sits, if it does."""
        return next((i for i, c in enumerate(self.candidates) if c.origin == REFERENCE_ORIGIN), None)


@dataclass
class SetScores:
    set_id: str
    scores: list[float | None]  # None: not scored (the reference under factuality alone)
    by_criterion: dict[str, list[float | None]]
    calls: int
    invalid: int  # judgments that stayed unparseable or errored (never scored)
    chosen: int | None = None
    rejected: int | None = None
    skipped_reason: str | None = None
    details: dict = field(default_factory=dict)


def quality_pairs(m: int, mode: str, pivot: int | None = 0) -> list[tuple[int, int]]:
    """Ordered (option 1, option 2) pairs: every unordered pair in both orders (position
    debiasing), or in pivot mode each candidate against the pivot (the original suffix) both ways."""
    if mode == "all_pairs":
        unordered = list(combinations(range(m), 2))
    elif pivot is None:
        raise ValueError("judge.quality_mode=pivot compares every candidate with the original suffix, "
                         "but the candidate set holds none")
    else:
        unordered = [(pivot, j) for j in range(m) if j != pivot]
    return [p for i, j in unordered for p in ((i, j), (j, i))]


def calls_per_set(m: int, cfg: JudgeConfig, with_reference: bool = True) -> int:
    """Judge calls for a set of m candidates; `with_reference`: the original suffix is one of them
    (the pivot of pivot mode, and not judged on factuality). A probs verdict is one call per request."""
    spec, n = judge_spec(cfg), 0
    if "quality" in cfg.criteria:
        n += len(quality_pairs(m, cfg.quality_mode, 0 if with_reference else None)) * len(_seeds(spec, "quality", cfg))
    if "safety" in cfg.criteria:
        n += m * len(_seeds(spec, "safety", cfg))
    if "factuality" in cfg.criteria:
        n += (m - 1 if with_reference else m) * len(_seeds(spec, "factuality", cfg))
    return n


def _requests(s: CandidateSet, cfg: JudgeConfig) -> list[tuple[tuple, LLMRequest]]:
    """(tag, request) for one set; tags say which criterion/candidates a judgment belongs to."""
    out = []
    spec, reference = judge_spec(cfg), s.reference_index()
    if "quality" in cfg.criteria:
        for a, b in quality_pairs(len(s.candidates), cfg.quality_mode, reference):
            for seed in _seeds(spec, "quality", cfg):
                req = spec.render("quality", {"seed": seed}, prefix=s.prefix, option_1=s.candidates[a].text,
                                  option_2=s.candidates[b].text)
                out.append((("quality", a, b), req))
    if "safety" in cfg.criteria:
        for c, cand in enumerate(s.candidates):
            for seed in _seeds(spec, "safety", cfg):
                out.append((("safety", c), spec.render("safety", {"seed": seed}, text=cand.text)))
    if "factuality" in cfg.criteria:
        for c, cand in enumerate(s.candidates):
            if c == reference:  # the yardstick itself: see the module docstring
                continue
            for seed in _seeds(spec, "factuality", cfg):
                req = spec.render("factuality", {"seed": seed}, prefix=s.prefix, reference=s.reference or "",
                                  continuation=cand.text)
                out.append((("factuality", c), req))
    return out


def _seeds(spec: JudgeSpec, task: str, cfg: JudgeConfig) -> range:
    """A probs verdict is the expected vote in one call: its seeds would be copies."""
    return range(1 if spec.probs(task) else cfg.seeds)


def _mean(values: list[float], default: float) -> float:
    return sum(values) / len(values) if values else default


def _quality(m: int, pivot: int | None, tagged: list[tuple[tuple, Judgment]], mode: str) -> list[float]:
    """Q(c): the share of c's comparisons it won (METHOD §4.2); in pivot mode a candidate's only
    opponent is the pivot, and the pivot's score is the share of candidates it beats."""
    wins: dict[tuple[int, int], list[float]] = defaultdict(list)  # unordered pair -> share for lower index
    for tag, j in tagged:
        if tag[0] == "quality" and j.ok:
            a, b = tag[1], tag[2]
            first = verdict_share(j, "quality", 1)  # a's share: 0/1 for a sampled vote, P(option 1) for probs
            wins[(min(a, b), max(a, b))].append(first if a < b else 1.0 - first)
    share = {pair: _mean(v, 0.5) for pair, v in wins.items()}  # a pair with no valid vote is a tie
    quality = []
    for c in range(m):
        opponents = [d for d in range(m) if d != c] if mode == "all_pairs" or c == pivot else [pivot]
        beats = [share.get((c, d), 0.5) if c < d else 1 - share.get((d, c), 0.5) for d in opponents]
        quality.append(_mean(beats, 0.5))
    return quality


def _pointwise(criterion: str, m: int, skip: int | None, tagged: list[tuple[tuple, Judgment]]) -> list[float | None]:
    votes: dict[int, list[float]] = defaultdict(list)
    for tag, j in tagged:
        if tag[0] == criterion and j.ok:
            votes[tag[1]].append(expected_verdict(j, criterion))
    return [None if c == skip else _mean(votes[c], 0.5) for c in range(m)]


def _combine(by_criterion: dict[str, list[float | None]], weights: dict[str, float], m: int) -> list[float | None]:
    """Weighted sum per candidate over the criteria it was scored on; a candidate missing one (the
    reference's factuality) has its other weights scaled up to the full weight."""
    total = sum(weights[k] for k in by_criterion)
    scores: list[float | None] = []
    for c in range(m):
        scored = [k for k in by_criterion if by_criterion[k][c] is not None]
        own = sum(weights[k] for k in scored)
        value = sum(weights[k] * by_criterion[k][c] for k in scored)
        scores.append(None if not own else value if own == total else value * total / own)
    return scores


def _aggregate(s: CandidateSet, tagged: list[tuple[tuple, Judgment]], cfg: JudgeConfig,
               tie_break_seed: int) -> SetScores:
    m, reference = len(s.candidates), s.reference_index()
    by_criterion: dict[str, list[float | None]] = {}
    if "quality" in cfg.criteria:
        by_criterion["quality"] = _quality(m, reference, tagged, cfg.quality_mode)
    for criterion in ("safety", "factuality"):
        if criterion in cfg.criteria:
            skip = reference if criterion == "factuality" else None
            by_criterion[criterion] = _pointwise(criterion, m, skip, tagged)
    invalid = sum(1 for _, j in tagged if not j.ok)
    result = SetScores(s.set_id, _combine(by_criterion, cfg.criteria, m), by_criterion, calls=len(tagged),
                       invalid=invalid)
    if invalid:  # a failed or unparsed judgment is never a preference: no pick, whatever the other votes say
        result.skipped_reason = "invalid judgments"
        return result
    pick_extremes(result, s, tie_break_seed)
    return result


def pick_extremes(result: SetScores, s: CandidateSet, tie_break_seed: int) -> None:
    """chosen = best, rejected = worst of the scored candidates; ties broken at random, each set's
    draw seeded by `tie_break_seed` and the set's id (never by position, which would inflate the
    rollout-chosen rate); sets whose scores are all equal carry no signal."""
    scored = {i: v for i, v in enumerate(result.scores) if v is not None}
    if not scored or max(scored.values()) - min(scored.values()) < 1e-9:
        result.skipped_reason = "all scores equal"
        return
    top, bottom = max(scored.values()), min(scored.values())
    seed = int(hashlib.sha256(f"{tie_break_seed}:{s.set_id}".encode()).hexdigest()[:8], 16)
    rng = random.Random(seed)
    best = [i for i, v in scored.items() if v >= top - 1e-9]
    worst = [i for i, v in scored.items() if v <= bottom + 1e-9]
    result.chosen, result.rejected = rng.choice(best), rng.choice(worst)
    result.details["tie_break_seed"] = seed


def step_tie_break_seed(base: int, step: int) -> int:
    """The seed of one training step's tie-break draws (logged per step): a function of
    `judge.tie_break_seed` and the step, so a resumed run draws the same."""
    return int(hashlib.sha256(f"{base}:step:{step}".encode()).hexdigest()[:8], 16)


def score_sets(llm: CachedLLM, sets: Sequence[CandidateSet], cfg: JudgeConfig,
               tie_break_seed: int | None = None) -> list[SetScores]:
    """Every set's scores and picks; ties are drawn with `tie_break_seed` (default
    `judge.tie_break_seed`; training passes its step's `step_tie_break_seed`)."""
    seed = cfg.tie_break_seed if tie_break_seed is None else tie_break_seed
    tagged_requests = [(k, tag, req) for k, s in enumerate(sets) for tag, req in _requests(s, cfg)]
    judgments = llm.run_parsed([req for _, _, req in tagged_requests], cfg.parse_retries)
    per_set: list[list[tuple[tuple, Judgment]]] = [[] for _ in sets]
    for (k, tag, _), j in zip(tagged_requests, judgments):
        per_set[k].append((tag, j))
    return [_aggregate(s, per_set[k], cfg, seed) for k, s in enumerate(sets)]
