"""Candidate-set scoring: all pairs and pivot modes make the calls they promise and pick the same ends."""

from __future__ import annotations

import pytest

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


TOWN = "Town news."
MINUTES = "The committee met on Tuesday to review the budget for the new library."
ONE_NUMBER = "The committee met on Tuesday and spent 40 dollars on the library."  # Possible Hallucination
MANY_NUMBERS = "In 1987, 1988 and 1999 the committee spent 12 and 75 dollars."  # Definite Hallucination


def _judge(tmp_path, *overrides):
    cfg = load_config(None, [f"run.root={tmp_path}", "judge.model=none", *overrides])
    return open_llm(cfg, "judge"), cfg.judge


def test_factuality_never_scores_the_reference_against_itself(tmp_path):
    """The original suffix is factuality's reference: judged against itself it would score 1 and
    win every set. It is not judged; with factuality alone it has no score and is never picked."""
    from sip_core.judge.scoring import Candidate, CandidateSet, calls_per_set, score_sets

    judge, jc = _judge(tmp_path, "judge.criteria={factuality: 1.0}")
    sets = [CandidateSet("f1", TOWN, [Candidate(MINUTES, "original"), Candidate(MANY_NUMBERS, "rollout"),
                                      Candidate(ONE_NUMBER, "rollout")], reference=MINUTES)]
    [s] = score_sets(judge, sets, jc)
    assert s.by_criterion["factuality"] == [None, 0.0, 0.5]
    assert s.scores[0] is None and (s.chosen, s.rejected) == (2, 1)  # the best rollout wins, not the original
    assert s.calls == calls_per_set(3, jc) == 2  # the reference was not asked about
    # a copy of the reference among the rollouts is judged like any candidate (and is factual)
    copy = [CandidateSet("f2", TOWN, [Candidate(MINUTES, "original"), Candidate(MINUTES, "rollout"),
                                      Candidate(MANY_NUMBERS, "rollout")], reference=MINUTES)]
    [s] = score_sets(judge, copy, jc)
    assert (s.chosen, s.rejected) == (1, 2)
    # the original alone against one rollout: one scored candidate, no signal
    [s] = score_sets(judge, [CandidateSet("f3", TOWN, [Candidate(MINUTES, "original"),
                                                       Candidate(ONE_NUMBER, "rollout")], reference=MINUTES)], jc)
    assert s.chosen is None and s.skipped_reason == "all scores equal"


def test_reference_weights_renormalised_over_its_other_criteria(tmp_path):
    from sip_core.judge.scoring import Candidate, CandidateSet, calls_per_set, score_sets

    judge, jc = _judge(tmp_path, "judge.criteria={quality: 1.0, factuality: 2.0}")
    sets = [CandidateSet("w1", TOWN, [Candidate(ONE_NUMBER, "rollout"), Candidate(MINUTES, "original"),
                                      Candidate(MANY_NUMBERS, "rollout")], reference=MINUTES)]
    [s] = score_sets(judge, sets, jc)
    q, f = s.by_criterion["quality"], s.by_criterion["factuality"]
    assert f[1] is None and None not in (f[0], f[2])
    assert s.scores[1] == pytest.approx(3.0 * q[1])  # quality's weight scaled up to the full weight 3
    assert s.scores[0] == pytest.approx(q[0] + 2.0 * f[0]) and s.scores[2] == pytest.approx(q[2] + 2.0 * f[2])
    assert s.calls == calls_per_set(3, jc) == 3 * 2 + 2
    no_reference = [CandidateSet("w2", TOWN, [Candidate(ONE_NUMBER, "rollout"), Candidate(MANY_NUMBERS, "rollout")],
                                 reference=MINUTES)]
    [s] = score_sets(judge, no_reference, jc)  # a rollouts-only pool: every candidate is judged on factuality
    assert s.calls == calls_per_set(2, jc, with_reference=False) == 2 + 2 and None not in s.scores


def test_pivot_is_the_original_suffix_wherever_it_sits(tmp_path):
    from sip_core.judge.scoring import Candidate, CandidateSet, quality_pairs, score_sets

    assert quality_pairs(3, "pivot", 1) == [(1, 0), (0, 1), (1, 2), (2, 1)]
    judge, jc = _judge(tmp_path, "judge.quality_mode=pivot")
    loop = "the budget the budget the budget the budget the budget the budget"
    sets = [CandidateSet("p1", TOWN, [Candidate(loop, "rollout"), Candidate(MINUTES, "original"),
                                      Candidate(ONE_NUMBER, "rewrite")], reference=MINUTES)]
    calls = []
    original_run = judge.run_parsed
    judge.run_parsed = lambda reqs, retries: calls.extend(reqs) or original_run(reqs, retries)
    [s] = score_sets(judge, sets, jc)
    assert s.calls == 4 and all(MINUTES in (r.inputs["option_1"], r.inputs["option_2"]) for r in calls)
    assert s.rejected == 0  # the looping rollout loses to the pivot
    with pytest.raises(ValueError, match="original suffix"):
        score_sets(judge, [CandidateSet("p2", TOWN, [Candidate(loop, "rollout"), Candidate(MINUTES, "rollout")])], jc)


def test_step_tie_break_seed_draws_and_is_logged():
    """Ties are drawn from the step's seed: the same step draws the same, another step may not."""
    from sip_core.config import JudgeConfig
    from sip_core.judge.scoring import Candidate, CandidateSet, SetScores, pick_extremes, step_tie_break_seed

    assert step_tie_break_seed(0, 3) == step_tie_break_seed(0, 3) != step_tie_break_seed(0, 4)
    assert step_tie_break_seed(1, 3) != step_tie_break_seed(0, 3)
    s = CandidateSet("t", TOWN, [Candidate(str(i), "rollout") for i in range(6)])
    picks = set()
    for step in range(12):
        result = SetScores("t", [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], {}, 0, 0)
        pick_extremes(result, s, step_tie_break_seed(JudgeConfig().tie_break_seed, step))
        picks.add((result.chosen, result.rejected))
        assert result.chosen in (0, 1, 2) and result.rejected in (3, 4, 5) and result.details["tie_break_seed"]
    assert len(picks) > 1  # uniform draws, not always the first of the tied


def test_a_set_with_a_failed_judgment_gets_no_pick(tmp_path):
    """One failed call among a set's votes: the set is counted invalid and has no chosen or
    rejected candidate, though its other votes would pick one (a failure is never a preference)."""
    import dataclasses

    from sip_core.judge.scoring import Candidate, CandidateSet, score_sets

    judge, jc = _judge(tmp_path)
    sets = [CandidateSet("s1", TOWN, [Candidate(MINUTES, "original"), Candidate(MANY_NUMBERS, "rollout"),
                                      Candidate(ONE_NUMBER, "rollout")], reference=MINUTES)]
    [clean] = score_sets(judge, sets, jc)
    assert clean.chosen is not None and clean.invalid == 0

    class FirstCallFails:
        def run_parsed(self, requests, parse_retries, **kw):
            out = judge.run_parsed(requests, parse_retries, **kw)
            return [dataclasses.replace(out[0], status="error", value=None, error="HTTP 500"), *out[1:]]

    [s] = score_sets(FirstCallFails(), sets, jc)
    assert s.invalid == 1 and s.skipped_reason == "invalid judgments"
    assert s.chosen is None and s.rejected is None
