"""The first screen from planted results: decided comparisons listed in words, undecided ones counted
per metric family with a sample-size estimate checked against hand-computed values, the headline
marking only decided differences, and no judged verdict at all when grading is circular."""

from __future__ import annotations

import pytest

from sip_core.evaluation.factuality import TruthfulQAResult
from sip_core.evaluation.rlmt import RewardGateResult
from sip_core.evaluation.safety import SafetyResult
from sip_core.evaluation.stats import clustered_interval, counting, wilson_interval
from sip_core.evaluation.winrate import WinRateResult
from sip_core.report import Arm, Comparison, RunResults, render_report
from sip_core.report.first_screen import first_screen_markdown
from sip_core.report.power import n_one_proportion, n_two_proportions

JUDGE = "scripted:planted"
PASSED = {"judge": JUDGE, "passed": True, "reasons": [], "position_bias": 0.5, "dimensions": {}}


def _safety(unsafe: int) -> SafetyResult:
    return SafetyResult(n=100, seeds=[0, 1, 2], judge=JUDGE, unsafe=counting(wilson_interval(unsafe, 100), "prefixes"))


def _tqa(k: int) -> TruthfulQAResult:
    return TruthfulQAResult(n=40, mc1=wilson_interval(k, 40), mc2=wilson_interval(k, 40))


def _gate(k: int) -> RewardGateResult:
    return RewardGateResult(n=128, seeds=[0], judge=JUDGE, reward=wilson_interval(k, 128), passed=True)


def _win(wins: int) -> WinRateResult:
    iv = counting(wilson_interval(wins, 128), "prefixes")
    return WinRateResult(n=128, seeds=[0, 1], judge=JUDGE, wins=wins, losses=128 - wins, win_rate=iv,
                         vote_win_rate=clustered_interval([[1.0]] * wins + [[0.0]] * (128 - wins)))


def planted(circular: bool) -> RunResults:
    """base / sip / ntp: safe rates 40% / 90% / 45% (n = 100), TruthfulQA MC2 50% / 95% / 60% (n = 40),
    reward 11 / 12 of 128 (no NTP gate), win rates against base 100 / 128 (sip) and 68 / 128 (ntp)."""
    arms = [Arm(name="base", evaluations={"safety_rtp": _safety(60), "truthfulqa": _tqa(20), "reward_gate": _gate(11)}),
            Arm(name="sip", stages=[], evaluations={"safety_rtp": _safety(10), "truthfulqa": _tqa(38),
                                                    "reward_gate": _gate(12)}),
            Arm(name="ntp", evaluations={"safety_rtp": _safety(55), "truthfulqa": _tqa(24)})]
    judge = {"backend": "openai", "model": "judge-m", "verdict": "sample"}
    other = {"backend": "openai", "model": "grader-m", "verdict": "sample"}
    return RunResults(run_name="planted", arms=arms, judge_audit=PASSED,
                      comparisons=[Comparison(a="sip", b="base", result=_win(100)),
                                   Comparison(a="base", b="ntp", result=_win(60))],  # ntp: 68 / 128 from its side
                      judges={"training": judge, "evaluation": judge if circular else other, "circular": circular,
                              "reasons": ["the evaluation judge is the training judge (openai: judge-m)"]
                              if circular else []})


def test_power_formulas_match_hand_computed_values():
    # two proportions 50% vs 60%: p̄ = .55; (1.959964·√(2·.55·.45) + 0.841621·√(.25 + .24))² / .1² = 387.3
    assert n_two_proportions(0.5, 0.6) == 388 == n_two_proportions(0.6, 0.5)
    # 40% vs 45%: (1.959964·√.48875 + 0.841621·√.4875)² / .05² = 1533.3
    assert n_two_proportions(0.40, 0.45) == 1534
    # one sample 60% against 50%: (1.959964·.5 + 0.841621·√.24)² / .1² = 193.9
    assert n_one_proportion(0.6) == 194
    # 68 of 128 = 53.125%: (0.979982 + 0.841621·√(.53125·.46875))² / .03125² = 2007.0 (2006.95)
    assert n_one_proportion(68 / 128) == 2007
    assert n_two_proportions(0.3, 0.3) is None and n_one_proportion(0.5) is None
    assert n_two_proportions(float("nan"), 0.5) is None


def _decided(md: str) -> list[str]:
    block = md.split("## Decided comparisons")[1].split("###")[0]
    return [line for line in block.splitlines() if line.startswith("- ")]


def test_decided_comparisons_listed_and_undecided_counted_with_their_power():
    md = first_screen_markdown(planted(circular=False))
    assert _decided(md) == [
        "- win rate vs base: sip 78.1% [70.2, 84.4] (n = 128) against base: the interval excludes 50%, so the judge "
        "prefers sip over base.",
        "- safety rate (RTP): sip 90.0% [82.6, 94.5] (n = 100) is higher than base 40.0% [30.9, 49.8] (n = 100); "
        "the intervals do not overlap.",
        "- safety rate (RTP): sip 90.0% [82.6, 94.5] (n = 100) is higher than ntp 45.0% [35.6, 54.8] (n = 100); "
        "the intervals do not overlap.",
        "- TruthfulQA MC2: sip 95.0% [83.5, 98.6] (n = 40) is higher than base 50.0% [35.2, 64.8] (n = 40); "
        "the intervals do not overlap.",
        "- TruthfulQA MC2: sip 95.0% [83.5, 98.6] (n = 40) is higher than ntp 60.0% [44.6, 73.7] (n = 40); "
        "the intervals do not overlap."]
    undecided = md.split("### Undecided, by metric family")[1]
    # 68 / 128 against base: 2007 prefixes; safe 40% vs 45%: 1534 per arm; MC2 50% vs 60%: 388 per arm;
    # reward 11 vs 12 of 128: 21,030 per arm (all shown to two significant digits)
    assert ("- **win rate vs base**: 1 of 2 comparisons undecided at n = 128; at the observed effect sizes they "
            "would need about 2,000 prefixes (one-sample z-test against 50%, paired prefixes).") in undecided
    assert ("- **safety**: 1 of 3 comparisons undecided at n = 100; at the observed effect sizes they would need "
            "about 1,500 items per arm (two-proportion z-test).") in undecided
    assert "- **factuality**: 1 of 3 comparisons undecided at n = 40; at the observed effect sizes they would " \
           "need about 390 items per arm" in undecided
    assert "- **RLMT reward**: 1 of 1 comparisons undecided at n = 128; at the observed effect sizes they would " \
           "need about 21,000 items per arm" in undecided
    assert "α = 0.05 two-sided and power 0.8" in undecided  # the formulas, named once


def _row(md: str, label: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {label} |"))


def test_headline_marks_only_decided_differences():
    md = first_screen_markdown(planted(circular=False))
    assert _row(md, "metric") == "| metric | A · base | B · sip | C · ntp |"
    assert _row(md, "safety rate (RTP)") == ("| safety rate (RTP) | 40.0% [30.9, 49.8] n=100 | "
                                             "90.0% [82.6, 94.5] n=100 **> A, C** | 45.0% [35.6, 54.8] n=100 |")
    assert _row(md, "win rate vs base") == ("| win rate vs base | (the base model) | 78.1% [70.2, 84.4] n=128 "
                                            "**> A** | 53.1% [44.5, 61.6] n=128 |")
    assert "**>" not in _row(md, "RLMT reward gate") and _row(md, "RLMT reward gate").endswith("| not run |")
    assert _row(md, "judged factuality") == "| judged factuality | not run | not run | not run |"


def test_circular_grading_gives_no_judged_verdict_anywhere():
    results = planted(circular=True)
    md = render_report(results, with_plots=False).markdown
    assert "**Grading is circular**: the evaluation judge is the training judge (openai: judge-m)." in md
    # only the judge-free metric keeps its verdicts; the judged ones are counted, not called
    assert [line.split(":")[0] for line in _decided(md)] == ["- TruthfulQA MC2", "- TruthfulQA MC2"]
    assert "3 judged difference(s) have non-overlapping intervals, but grading is circular" in md
    assert "prefers" not in md and " beats " not in md
    appendix = md.split("## Appendix")[1]
    safety = [line for line in appendix.splitlines() if line.startswith("| safety rate (RTP) |")]
    assert len(safety) == 3 and not any("decided:" in line for line in safety)
    assert "**>" not in _row(md, "safety rate (RTP)") and "**>" not in _row(md, "win rate vs base")
    assert "**> A, C**" in _row(md, "TruthfulQA MC2")
    assert "intervals separate; no verdict (circular grading)" in appendix


@pytest.mark.parametrize("circular", [True, False])
def test_first_screen_fits_the_size_budget_on_a_tiny_lifecycle_shape(circular):
    """report.md without its appendix stays under 25 KB for results shaped like the tiny lifecycle's
    (planted: tests/report/tiny_fixture.py, not a real run)."""
    from tiny_fixture import tiny_results

    md = render_report(tiny_results(circular=circular), with_plots=False).markdown
    main, appendix = md.split("## Appendix")
    assert len(main.encode()) <= 25_000, len(main.encode())
    assert "<details>" in appendix and "cannot tell" not in main
    assert main.index("## Judges") < main.index("## Headline") < main.index("## Decided comparisons") \
        < main.index("## Training")


def test_an_arms_judge_agreement_result_becomes_the_runs_agreement():
    agreement = {"metric": "judge_agreement", "n": 8, "agree": 8, "rate": 1.0, "low": 0.676, "high": 1.0}
    results = RunResults.model_validate({"run_name": "x", "arms": [
        {"name": "base", "evaluations": {"judge_agreement": agreement}}]})
    assert results.arms[0].evaluations == {} and results.judges == {"agreement": agreement}
    md = first_screen_markdown(results)
    assert "Agreement of the two judges on the same held-out pairs: 100.0% [67.6%, 100.0%] (8 of 8)." in md
    assert "Judge roles were not recorded" in md and "independent" not in md  # an agreement alone says neither


def test_unsafe_prefix_rows_appear_where_the_run_has_them_and_decide_on_their_own():
    """The paper's Table 1 safety row: the win rate on unsafe prefixes and their safety rate are
    headline rows of a run that has them (a corpus with no unsafe prefix shows neither), and a
    win rate on unsafe prefixes is never read as the standard one."""
    plain = planted(circular=False)
    assert "unsafe prefixes" not in first_screen_markdown(plain)
    results = planted(circular=False)
    results.arms[0].evaluations["safety_unsafe_prefixes"] = _safety(70)
    results.arms[1].evaluations["safety_unsafe_prefixes"] = _safety(20)
    results.comparisons.append(Comparison(a="sip", b="base", kind="winrate_unsafe", result=_win(30)))
    md = first_screen_markdown(results)
    assert _row(md, "win rate vs base (unsafe prefixes)") == (
        "| win rate vs base (unsafe prefixes) | (the base model) | 23.4% [16.9, 31.5] n=128 | "
        "not compared with base |")
    assert _row(md, "win rate vs base").startswith("| win rate vs base | (the base model) | 78.1%")  # unchanged
    assert _row(md, "safety rate (unsafe prefixes)") == (
        "| safety rate (unsafe prefixes) | 30.0% [21.9, 39.6] n=100 | 80.0% [71.1, 86.7] n=100 **> A** | not run |")
    assert "**>" not in _row(md, "win rate vs base (unsafe prefixes)")  # 23% < 50%: base is the better side
