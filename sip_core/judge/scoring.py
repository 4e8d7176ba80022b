"""Scoring candidate sets (method §4): quality by pairwise judgments, safety pointwise, factuality
against the original suffix, combined into one score; best and worst picked for Online DPO.

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
from sip_core.llm.prompting import load_prompt
from sip_core.llm.types import LLMRequest


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


@dataclass
class SetScores:
    set_id: str
    scores: list[float]
    by_criterion: dict[str, list[float]]
    calls: int
    invalid: int  # judgments that stayed unparseable or errored (never scored)
    chosen: int | None = None
    rejected: int | None = None
    skipped_reason: str | None = None
    details: dict = field(default_factory=dict)


def quality_pairs(m: int, mode: str) -> list[tuple[int, int]]:
    """Ordered (option 1, option 2) pairs: every unordered pair in both orders (position
    debiasing), or in pivot mode each candidate against candidate 0 (the original) both ways."""
    unordered = list(combinations(range(m), 2)) if mode == "all_pairs" else [(0, j) for j in range(1, m)]
    return [p for i, j in unordered for p in ((i, j), (j, i))]


def calls_per_set(m: int, cfg: JudgeConfig) -> int:
    n = 0
    if "quality" in cfg.criteria:
        n += len(quality_pairs(m, cfg.quality_mode)) * cfg.seeds
    if "safety" in cfg.criteria:
        n += m * cfg.seeds
    if "factuality" in cfg.criteria:
        n += m * cfg.seeds
    return n


def _requests(s: CandidateSet, cfg: JudgeConfig) -> list[tuple[tuple, LLMRequest]]:
    """(tag, request) for one set; tags say which criterion/candidates a judgment belongs to."""
    out = []
    seeds = range(cfg.seeds)
    if "quality" in cfg.criteria:
        prompt = load_prompt("quality")
        for a, b in quality_pairs(len(s.candidates), cfg.quality_mode):
            for seed in seeds:
                req = prompt.render({"seed": seed}, cfg.prefill, prefix=s.prefix,
                                    option_1=s.candidates[a].text, option_2=s.candidates[b].text)
                out.append((("quality", a, b), req))
    if "safety" in cfg.criteria:
        prompt = load_prompt("safety")
        for c, cand in enumerate(s.candidates):
            for seed in seeds:
                out.append((("safety", c), prompt.render({"seed": seed}, cfg.prefill, text=cand.text)))
    if "factuality" in cfg.criteria:
        prompt = load_prompt("factuality")
        for c, cand in enumerate(s.candidates):
            for seed in seeds:
                req = prompt.render({"seed": seed}, cfg.prefill, prefix=s.prefix, reference=s.reference or "",
                                    continuation=cand.text)
                out.append((("factuality", c), req))
    return out


def _mean(values: list[float], default: float) -> float:
    return sum(values) / len(values) if values else default


def _aggregate(s: CandidateSet, tagged: list[tuple[tuple, Judgment]], cfg: JudgeConfig) -> SetScores:
    m = len(s.candidates)
    by_criterion: dict[str, list[float]] = {}
    invalid = sum(1 for _, j in tagged if not j.ok)
    if "quality" in cfg.criteria:
        wins: dict[tuple[int, int], list[float]] = defaultdict(list)  # unordered pair -> share for lower index
        for tag, j in tagged:
            if tag[0] == "quality" and j.ok:
                a, b = tag[1], tag[2]
                winner = a if j.value == 1 else b
                lo, hi = min(a, b), max(a, b)
                wins[(lo, hi)].append(1.0 if winner == lo else 0.0)
        share = {pair: _mean(v, 0.5) for pair, v in wins.items()}  # a pair with no valid vote is a tie
        quality = []
        for c in range(m):
            opponents = [d for d in range(m) if d != c] if cfg.quality_mode == "all_pairs" else (
                range(1, m) if c == 0 else [0])
            beats = [share.get((c, d), 0.5) if c < d else 1 - share.get((d, c), 0.5) for d in opponents]
            quality.append(_mean(beats, 0.5))
        by_criterion["quality"] = quality
    for criterion in ("safety", "factuality"):
        if criterion in cfg.criteria:
            votes: dict[int, list[float]] = defaultdict(list)
            for tag, j in tagged:
                if tag[0] == criterion and j.ok:
                    votes[tag[1]].append(float(j.value))
            by_criterion[criterion] = [_mean(votes[c], 0.5) for c in range(m)]
    scores = [sum(cfg.criteria[k] * by_criterion[k][c] for k in by_criterion) for c in range(m)]
    result = SetScores(s.set_id, scores, by_criterion, calls=len(tagged), invalid=invalid)
    pick_extremes(result, s, cfg)
    return result


def pick_extremes(result: SetScores, s: CandidateSet, cfg: JudgeConfig) -> None:
    """chosen = best, rejected = worst; ties broken at random with a logged seed (never by
    position, which would inflate the rollout-chosen rate); all-equal sets carry no signal."""
    scores = result.scores
    if max(scores) - min(scores) < 1e-9:
        result.skipped_reason = "all scores equal"
        return
    seed = int(hashlib.sha256(f"{cfg.tie_break_seed}:{s.set_id}".encode()).hexdigest()[:8], 16)
    rng = random.Random(seed)
    best = [i for i, v in enumerate(scores) if v >= max(scores) - 1e-9]
    worst = [i for i, v in enumerate(scores) if v <= min(scores) + 1e-9]
    result.chosen, result.rejected = rng.choice(best), rng.choice(worst)
    result.details["tie_break_seed"] = seed


def score_sets(llm: CachedLLM, sets: Sequence[CandidateSet], cfg: JudgeConfig) -> list[SetScores]:
    tagged_requests = [(k, tag, req) for k, s in enumerate(sets) for tag, req in _requests(s, cfg)]
    judgments = llm.run_parsed([req for _, _, req in tagged_requests], cfg.parse_retries)
    per_set: list[list[tuple[tuple, Judgment]]] = [[] for _ in sets]
    for (k, tag, _), j in zip(tagged_requests, judgments):
        per_set[k].append((tag, j))
    return [_aggregate(s, per_set[k], cfg) for k, s in enumerate(sets)]
