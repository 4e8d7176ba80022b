"""Evaluations use the evaluation judge, report how often it agrees with the training judge, and
never turn failed judgments into numbers (issue 12, issue 14's rule for evaluations)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sip_core.config import JudgeConfig
from sip_core.evaluation import coherence_eval, judged_factuality, pairwise_win_rate, reward_gate
from sip_core.evaluation.agreement import judge_agreement
from sip_core.llm.cache import CallsFailed, Judgment


class ScriptedJudge:
    """A CachedLLM stand-in: answer(request) is the parsed value; None is a failed call."""

    def __init__(self, answer, name="scripted"):
        self.answer, self.calls = answer, 0
        self.backend = SimpleNamespace(model_id=name)

    def run_parsed(self, requests, parse_retries, progress=None):
        self.calls += len(requests)
        out = []
        for r in requests:
            v = self.answer(r)
            out.append(Judgment(key="k", prompt=r.prompt, text=None if v is None else str(v), value=v,
                                status="ok" if v is not None else "error", error=None if v is not None else "down",
                                seed=r.sampling.seed))
        return out


def prefers(word):
    """A quality judge that picks the option containing `word` (else option 1)."""
    return lambda r: 2 if word in r.inputs["option_2"] and word not in r.inputs["option_1"] else 1


def test_agreement_counts_same_verdicts_with_a_wilson_interval():
    prefixes = [f"p{i}" for i in range(6)]
    a = ["good", "good", "good", "bad", "bad", "bad"]
    b = ["bad", "bad", "bad", "good", "good", "good"]
    training = ScriptedJudge(prefers("good"), "train")
    # the evaluation judge agrees on the first four pairs and is position-bound (a tie) on the rest
    evaluation = ScriptedJudge(lambda r: prefers("good")(r) if r.inputs["prefix"] in prefixes[:4] else 1, "eval")
    res = judge_agreement(training, JudgeConfig(), evaluation, JudgeConfig(), prefixes, a, b, seeds=1)
    assert (res.n, res.agree, res.rate) == (6, 4, round(4 / 6, 4))
    assert res.low < res.rate < res.high and res.training == "train" and res.evaluation == "eval"
    assert res.verdicts[:4] == [("A", "A")] * 3 + [("B", "B")] and res.verdicts[4] == ("B", "tie")


def test_agreement_leaves_out_pairs_a_judge_failed_on():
    prefixes = ["p0", "p1", "p2"]
    training = ScriptedJudge(prefers("good"))
    evaluation = ScriptedJudge(lambda r: None if r.inputs["prefix"] == "p2" else prefers("good")(r))
    res = judge_agreement(training, JudgeConfig(), evaluation, JudgeConfig(), prefixes, ["good"] * 3, ["bad"] * 3)
    assert (res.n, res.agree, res.invalid) == (2, 2, 1)
    assert res.verdicts[2] == ("A", None)


def test_judged_suites_raise_when_every_judgment_failed_and_exclude_some_failures():
    down = ScriptedJudge(lambda r: None)
    with pytest.raises(CallsFailed, match="win rate: 4 of 4 model calls failed"):
        pairwise_win_rate(down, JudgeConfig(), ["p0", "p1"], ["a", "a"], ["b", "b"], seeds=1)
    with pytest.raises(CallsFailed, match="coherence"):
        coherence_eval(down, JudgeConfig(), ["p0"], ["a"], ["b"], seeds=1)
    with pytest.raises(CallsFailed, match="judged factuality"):
        judged_factuality(down, JudgeConfig(), ["p0"], ["ref"], ["c"], seeds=2)
    with pytest.raises(CallsFailed, match="reward gate: all 2 judged predictions failed"):
        reward_gate(down, JudgeConfig(), ["p0"], ["ref"], [["<think>x</think> a", "<think>y</think> b"]])
    half = ScriptedJudge(lambda r: None if r.inputs["prefix"] == "p1" else 1)
    res = pairwise_win_rate(half, JudgeConfig(), ["p0", "p1"], ["a", "a"], ["b", "b"], seeds=1)
    assert (res.n, res.invalid, res.invalid_judgments) == (1, 1, 2)  # p1 left out, not a tie
