"""Self-improving pretraining's work (method §4-§5): prefixes -> candidate pools -> pairs, with stats.

Each prefix's pool (`pretrain.pool`, METHOD §4.1) is drawn from the original suffix, its rewrite and
the policy's K rollouts. With `pretrain.pairing=best_vs_worst` the judge scores the pool and the
best and the worst candidate make a training pair; sets whose scores are all equal carry no signal:
they are skipped and counted. The judge-free pairings (METHOD §4.4 baselines) pick the chosen (and
rejected) candidate by origin instead. A prefix whose pool needs a rewrite its chunk lacks is
skipped and counted: a missing rewrite is never replaced by something else.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sip_core.config import PAIRINGS, POOLS, Pairing, SipConfig
from sip_core.judge.scoring import Candidate, CandidateSet, SetScores
from sip_core.training.objectives import Pairs

ORIGINS = ("original", "rewrite", "rollout")
DEFAULT_POOL = "suffix+rewrite_if_any+rollouts"


def judge_identity(cfg: SipConfig, model_id: str) -> dict:
    """What makes one judge's scores differ from another's: a training run's parent."""
    j = cfg.judge
    return {"model_id": model_id, "criteria": j.criteria, "seeds": j.seeds, "quality_mode": j.quality_mode,
            "prefill": j.prefill, "tie_break_seed": j.tie_break_seed}


def needs_rewrite(pool: str, pairing: str) -> bool:
    """Whether every prefix must have a rewrite: the pool requires one, or the pairing picks it."""
    return POOLS[pool].get("rewrite") == "required" or PAIRINGS[pairing].chosen == "rewrite"


def rows_in_pool(rows: list[dict], rewrites: dict[str, list[int]], pool: str, pairing: str) -> list[int]:
    """Indices of the rows whose pool can be built (the others lack a rewrite they need)."""
    if not needs_rewrite(pool, pairing):
        return list(range(len(rows)))
    return [i for i, r in enumerate(rows) if r["chunk_id"] in rewrites]


def check_rewrites(chunk_ids: list[str], rewrites: dict[str, list[int]], pool: str, pairing: str) -> None:
    """A run whose every prefix would be skipped for want of a rewrite is an error, not a no-op run."""
    if needs_rewrite(pool, pairing) and not any(cid in rewrites for cid in chunk_ids):
        raise ValueError(f"pretrain.pool={pool} with pretrain.pairing={pairing} needs rewrites, but no train "
                         "chunk has one: run `sip rewrite` on these chunks first, or pick a pool without rewrites")


@dataclass
class Candidates:
    """Each prefix's candidates as (origin, token ids), and the same as the sets the judge reads."""

    ids: list[list[tuple[str, list[int]]]]
    sets: list[CandidateSet]


def candidates(rows: list[dict], rollouts: list[list[list[int]]], rewrites: dict[str, list[int]], n_tokens: int,
               step: int, tokenizer, pool: str = DEFAULT_POOL) -> Candidates:
    """The pool's members in the order original suffix, rewrite (cut to n_tokens) when the pool
    takes it and the chunk has one, then the rollouts."""
    members = POOLS[pool]
    ids, sets = [], []
    for r, outs in zip(rows, rollouts):
        cands = [("original", list(r["suffix_ids"]))] if "original" in members else []
        if "rewrite" in members and r["chunk_id"] in rewrites:
            cands.append(("rewrite", list(rewrites[r["chunk_id"]])[:n_tokens]))
        cands += [("rollout", o) for o in outs]
        ids.append(cands)
        sets.append(CandidateSet(f"{r['chunk_id']}:{step}", r["prefix_text"],
                                 [Candidate(tokenizer.decode(c), origin) for origin, c in cands],
                                 reference=r["suffix_text"]))
    return Candidates(ids, sets)


class PairStats(Counter):
    """Per step: sets, their pool sizes and rewrites, sets skipped (all equal, no rewrite),
    unparsed judgments, origins of the picks."""

    def pairs(self, prompts: list[list[int]], cands: Candidates, scored: list[SetScores]) -> Pairs:
        """Best vs worst of every judged set that has a signal."""
        pairs = Pairs([], [], [])
        self._count_pools(cands)
        for prompt, ids, s in zip(prompts, cands.ids, scored):
            self["invalid_judgments"] += s.invalid
            if s.invalid:  # a failed or unparsed judgment is never a preference: the set is skipped
                self["skipped_invalid"] += 1
                continue
            if s.chosen is None:
                self["skipped_all_equal"] += 1
                continue
            self._add(pairs, prompt, ids, s.chosen, s.rejected)
        return pairs

    def picked_pairs(self, prompts: list[list[int]], cands: Candidates, pairing: Pairing) -> Pairs:
        """Judge-free: the chosen (and rejected) candidate of each set by origin, the first of its kind."""
        pairs = Pairs([], [], [])
        self._count_pools(cands)
        for prompt, ids in zip(prompts, cands.ids):
            origins = [origin for origin, _ in ids]
            chosen = origins.index(pairing.chosen)
            rejected = origins.index(pairing.rejected) if pairing.rejected else None
            self._add(pairs, prompt, ids, chosen, rejected)
        return pairs

    def _count_pools(self, cands: Candidates) -> None:
        self["sets"] += len(cands.ids)
        self["candidates"] += sum(len(ids) for ids in cands.ids)
        self["pool_rewrites"] += sum(any(origin == "rewrite" for origin, _ in ids) for ids in cands.ids)

    def _add(self, pairs: Pairs, prompt: list[int], ids: list[tuple[str, list[int]]], chosen: int,
             rejected: int | None) -> None:
        self["paired"] += 1
        self[f"chosen_{ids[chosen][0]}"] += 1
        pairs.prompts.append(prompt)
        pairs.chosen.append(ids[chosen][1])
        if rejected is not None:
            self[f"rejected_{ids[rejected][0]}"] += 1
            pairs.rejected.append(ids[rejected][1])

    def metrics(self) -> dict:
        def share(key: str) -> float:
            return self[key] / self["paired"] if self["paired"] else float("nan")

        return {"sets": self["sets"], "skipped_all_equal": self["skipped_all_equal"],
                "invalid_judgments": self["invalid_judgments"], "skipped_invalid": self["skipped_invalid"],
                **{f"chosen_share_{o}": share(f"chosen_{o}") for o in ORIGINS},
                **{f"rejected_share_{o}": share(f"rejected_{o}") for o in ORIGINS},
                "pool_size": self["candidates"] / self["sets"] if self["sets"] else float("nan"),
                "pool_rewrites": self["pool_rewrites"], "skipped_no_rewrite": self["skipped_no_rewrite"]}
