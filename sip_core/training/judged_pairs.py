"""Self-improving pretraining's work (method §5): prefixes -> candidates -> judged pairs, with stats.

Each prefix's candidate set is the original suffix (+ its rewrite when one exists) + the policy's
rollouts; the judge scores the set, and the best and the worst candidate make a training pair.
Sets whose scores are all equal carry no signal: they are skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sip_core.config import SipConfig
from sip_core.judge.scoring import Candidate, CandidateSet, SetScores
from sip_core.training.objectives import Pairs

ORIGINS = ("original", "rewrite", "rollout")


def judge_identity(cfg: SipConfig, model_id: str) -> dict:
    """What makes one judge's scores differ from another's: a training run's parent."""
    j = cfg.judge
    return {"model_id": model_id, "criteria": j.criteria, "seeds": j.seeds, "quality_mode": j.quality_mode,
            "prefill": j.prefill, "tie_break_seed": j.tie_break_seed}


@dataclass
class Candidates:
    """Each prefix's candidates as (origin, token ids), and the same as the sets the judge reads."""

    ids: list[list[tuple[str, list[int]]]]
    sets: list[CandidateSet]


def candidates(rows: list[dict], rollouts: list[list[list[int]]], rewrites: dict[str, list[int]], n_tokens: int,
               step: int, tokenizer) -> Candidates:
    """Original suffix, rewrite (cut to n_tokens) when the chunk has one, then the rollouts."""
    ids, sets = [], []
    for r, outs in zip(rows, rollouts):
        cands = [("original", list(r["suffix_ids"]))]
        if r["chunk_id"] in rewrites:
            cands.append(("rewrite", list(rewrites[r["chunk_id"]])[:n_tokens]))
        cands += [("rollout", o) for o in outs]
        ids.append(cands)
        sets.append(CandidateSet(f"{r['chunk_id']}:{step}", r["prefix_text"],
                                 [Candidate(tokenizer.decode(c), origin) for origin, c in cands],
                                 reference=r["suffix_text"]))
    return Candidates(ids, sets)


class PairStats(Counter):
    """Per step: sets judged, sets skipped (all equal), unparsed judgments, origins of the picks."""

    def pairs(self, prompts: list[list[int]], cands: Candidates, scored: list[SetScores]) -> Pairs:
        """Best vs worst of every set that has a signal."""
        pairs = Pairs([], [], [])
        for prompt, ids, s in zip(prompts, cands.ids, scored):
            self["sets"] += 1
            self["invalid_judgments"] += s.invalid
            if s.chosen is None:
                self["skipped_all_equal"] += 1
                continue
            self[f"chosen_{ids[s.chosen][0]}"] += 1
            self[f"rejected_{ids[s.rejected][0]}"] += 1
            pairs.prompts.append(prompt)
            pairs.chosen.append(ids[s.chosen][1])
            pairs.rejected.append(ids[s.rejected][1])
        return pairs

    def metrics(self) -> dict:
        paired = self["sets"] - self["skipped_all_equal"]

        def share(key: str) -> float:
            return self[key] / paired if paired else float("nan")

        return {"sets": self["sets"], "skipped_all_equal": self["skipped_all_equal"],
                "invalid_judgments": self["invalid_judgments"],
                **{f"chosen_share_{o}": share(f"chosen_{o}") for o in ORIGINS},
                **{f"rejected_share_{o}": share(f"rejected_{o}") for o in ORIGINS}}
