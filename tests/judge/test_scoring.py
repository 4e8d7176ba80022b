"""Candidate-set scoring: all pairs and pivot modes make the calls they promise and pick the same ends."""

from __future__ import annotations

from sip_core.config import load_config
from sip_core.llm.factory import open_llm


def test_candidate_sets_all_pairs_and_pivot(tmp_path):
    from sip_core.judge.scoring import Candidate, CandidateSet, calls_per_set, score_sets

    original = ("The committee met on Tuesday to review the budget for the new library. Members agreed "
                "to fund longer opening hours and a children's reading room.")
    loop = "the budget the budget the budget the budget the budget the budget the budget the budget"
    sets = [CandidateSet("s1", "Town news.", [Candidate(original, "original"), Candidate(loop, "rollout"),
                                             Candidate(original, "rollout")], reference=original)]
    for mode, expected_calls in (("all_pairs", 3 * 2 * 2), ("pivot", 2 * 2 * 2)):
        cfg = load_config(None, [f"run.root={tmp_path}", "judge.model=none", "judge.seeds=2",
                                 f"judge.quality_mode={mode}"])
        [scores] = score_sets(open_llm(cfg, "judge"), sets, cfg.judge)
        assert scores.calls == expected_calls == calls_per_set(3, cfg.judge)
        assert scores.rejected == 1 and scores.chosen in (0, 2) and scores.invalid == 0
