"""Safety evaluation (sip_core/evaluation/safety.py, issue 13): RealToxicityPrompts-challenging
stratified over all seven categories and reported per category; XSTest's two halves by string match
and by the P1 judge; held-out unsafe prefixes; a judge whose every call failed gives no rate."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from sip_core.config import JudgeConfig
from sip_core.evaluation.safety import (RTP_CATEGORIES, load_rtp_challenging, safety_suite, sample_rtp_challenging,
                                        sample_xstest, unsafe_rate, xstest_eval)
from sip_core.llm.cache import CallsFailed, Judgment


class Judge:
    """A CachedLLM stand-in: `verdict(text)` is True (safe), False (unsafe) or None (unparseable)."""

    def __init__(self, verdict):
        self.verdict, self.backend = verdict, SimpleNamespace(model_id="scripted:safety")

    def run_parsed(self, requests, parse_retries, progress=None):
        out = []
        for r in requests:
            v = self.verdict(r.inputs["text"])
            out.append(Judgment(key="k", prompt=r.prompt, text=str(v), value=v,
                                status="unparseable" if v is None else "ok", seed=r.sampling.seed))
        return out


def test_rtp_sample_covers_all_seven_categories_at_random_not_file_order():
    rows = sample_rtp_challenging(21, seed=0)
    assert Counter(r["category"] for r in rows) == {c: 3 for c in RTP_CATEGORIES}
    assert len(RTP_CATEGORIES) == 7
    first_in_file = load_rtp_challenging(per_category=3)
    assert [r["prompt"] for r in rows] != [r["prompt"] for r in first_in_file]  # drawn, not the first N
    assert sample_rtp_challenging(21, seed=0) == rows and sample_rtp_challenging(21, seed=1) != rows
    assert Counter(r["category"] for r in sample_rtp_challenging(2)) == {c: 1 for c in RTP_CATEGORIES}


def test_rtp_result_names_every_category_with_n_and_interval():
    rows = sample_rtp_challenging(14)
    texts = [f"{r['category']}:{i}" for i, r in enumerate(rows)]
    # threats always unsafe, insults never judgeable, the rest safe
    judge = Judge(lambda t: None if t.startswith("insult") else not t.startswith("threat"))
    res = unsafe_rate(judge, JudgeConfig(parse_retries=0), texts, seeds=3, groups=[r["category"] for r in rows],
                      group_names=RTP_CATEGORIES)
    assert list(res.safe_by_group) == list(RTP_CATEGORIES) == list(res.by_group)
    assert res.safe_by_group["insult"].n == 0 and res.invalid == 2  # no valid vote: left out, counted
    assert res.by_group["threat"].estimate == 1.0 and res.safe_by_group["threat"].estimate == 0.0
    assert res.safe_by_group["flirtation"].n == 2 and res.safe_by_group["flirtation"].low > 0.0
    assert res.n == 12 and res.safe.k == 10 and res.safe.low < 10 / 12 < res.safe.high


def test_xstest_both_halves_by_string_match_and_by_the_judge():
    items = sample_xstest(10)
    assert Counter(it["label"] for it in items) == {"safe": 10, "unsafe": 10}
    # the judge calls every compliance with an unsafe prompt unsafe
    refuse = {"safe": 2, "unsafe": 6}  # the first 2 safe and the first 6 unsafe prompts are refused
    seen: Counter = Counter()
    responses = []
    for it in items:
        seen[it["label"]] += 1
        opener = "I cannot help with that." if seen[it["label"]] <= refuse[it["label"]] else "Sure: "
        responses.append(f"{opener} {it['id']} {it['label']}")
    judge = Judge(lambda t: not (t.endswith(" unsafe") and t.startswith("Sure")))
    res = xstest_eval(items, responses, judge, JudgeConfig(), seeds=2)
    assert (res.over_refusal.k, res.over_refusal.n) == (2, 10)
    assert (res.unsafe_refusal.k, res.unsafe_compliance.k, res.unsafe_compliance.n) == (6, 4, 10)
    assert set(res.judged_safe) == {"safe", "unsafe"}
    assert res.judged_safe["safe"].estimate == 1.0 and res.judged_safe["unsafe"].estimate == pytest.approx(0.6)
    assert res.judge == "scripted:safety" and res.seeds == [0, 1]
    assert xstest_eval(items, responses).judged_safe == {}  # no judge: the string match alone


def test_a_judge_that_never_answers_gives_no_rate():
    with pytest.raises(CallsFailed, match="unsafe_rate: 6 of 6"):
        unsafe_rate(Judge(lambda t: None), JudgeConfig(parse_retries=0), ["a", "b", "c"], seeds=2)


def test_safety_suite_builds_all_three_evaluations():
    asked = []

    def continue_ids(prefixes):
        asked.append(len(prefixes))
        return ["fine text"] * len(prefixes)

    suite = safety_suite(Judge(lambda t: True), JudgeConfig(), 2, continue_ids, lambda ps: ["Sure."] * len(ps),
                         lambda text: [len(text)], rtp_prompts=7, xstest_per_half=2,
                         unsafe_continuations=["a continuation", "another one"])
    results = {name: thunk() for name, thunk in suite.items()}
    assert set(results) == {"safety_rtp", "xstest", "safety_unsafe_prefixes"}
    assert asked == [7] and results["safety_rtp"].safe.estimate == 1.0  # unsafe prefixes come continued
    assert results["safety_unsafe_prefixes"].n == 2
    assert results["xstest"].n == 2 and results["xstest"].unsafe_compliance.k == 2
    assert "safety_unsafe_prefixes" not in safety_suite(Judge(lambda t: True), JudgeConfig(), 1, continue_ids,
                                                        lambda ps: ps, len, 7, 1)
