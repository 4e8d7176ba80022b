"""RLMT's reward from the judge's verdicts (`rlmt.reward`): binary (METHOD §5.6) or the verdict's
expectation over the judge's sampling. A probs judge whose P(1) never crosses 0.5 gives every
prediction reward 0 under binary, so no group has a signal; expected keeps the differences."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from sip_core.config import JudgeConfig
from sip_core.evaluation.rlmt import reward_gate
from sip_core.llm.cache import Judgment
from sip_core.llm.types import CHOICE_LINE
from sip_core.training.losses import signal_groups
from sip_core.training.think_then_predict import judge_predictions


class ProbsJudge:
    """A CachedLLM stand-in answering rlmt_judge requests as a probs judge would: the stored
    text carries each label's log-probability, the value is the most likely label."""

    def __init__(self, p_one, fail=()):
        self.p_one, self.fail, self.calls, self.requests = p_one, set(fail), 0, []
        self.backend = SimpleNamespace(model_id="scripted:probs")

    def run_parsed(self, requests, parse_retries, progress=None):
        self.calls += len(requests)
        self.requests += requests
        out = []
        for r in requests:
            prediction = r.inputs["prediction"]
            p = next((v for k, v in self.p_one.items() if k in prediction), 0.0)
            if any(f in prediction for f in self.fail):
                out.append(Judgment(key="k", prompt=r.prompt, text=None, value=None, status="error"))
                continue
            logprobs = {"0": math.log(1 - p), "1": math.log(p)}
            text = f"{CHOICE_LINE}{json.dumps(logprobs)}\n{{\"score\": {int(p > 0.5)}"
            out.append(Judgment(key="k", prompt=r.prompt, text=text, value=int(p > 0.5), status="ok"))
        return out


class VotingJudge:
    """A sampled judge: the vote for a prediction depends on the request's seed."""

    def __init__(self, votes):
        self.votes, self.calls = votes, 0
        self.backend = SimpleNamespace(model_id="scripted:votes")

    def run_parsed(self, requests, parse_retries, progress=None):
        self.calls += len(requests)
        out = []
        for r in requests:
            prediction = r.inputs["prediction"]
            votes = next(v for k, v in self.votes.items() if k in prediction)
            value = votes[r.sampling.seed % 1000]
            out.append(Judgment(key="k", prompt=r.prompt, text=str(value), value=value, status="ok",
                                seed=r.sampling.seed))
        return out


PREDICTIONS = ["alpha guess", "beta guess", "gamma guess", None]  # None: the thought never closed


def _judge_all(judge, cfg, reward):
    return judge_predictions(judge, cfg, ["A prefix."] * 4, PREDICTIONS, ["The reference."] * 4, reward=reward)


def test_expected_reward_is_p_one_where_binary_gives_every_prediction_zero():
    judge, cfg = ProbsJudge({"alpha": 0.2, "beta": 0.45, "gamma": 0.05}), JudgeConfig(verdict="probs", seeds=4)
    binary, expected = _judge_all(judge, cfg, "binary"), _judge_all(judge, cfg, "expected")
    assert binary.values == [0.0, 0.0, 0.0, 0.0]
    assert expected.values == pytest.approx([0.2, 0.45, 0.05, 0.0])
    assert judge.calls == 6 and expected.calls == 3  # probs: one call per prediction, whatever cfg.seeds says
    assert expected.format_failures == 1 and expected.invalid == 0
    # as RLMT groups (one group of the three predictions): no signal under binary, a signal under expected
    assert signal_groups(binary.values[:3], binary.failed[:3], 3)[1] == []
    assert signal_groups(expected.values[:3], expected.failed[:3], 3)[1] == [0]


def test_expected_reward_over_sampled_votes_is_the_share_of_ones():
    judge = VotingJudge({"alpha": [1, 0, 0], "beta": [1, 1, 0], "gamma": [0, 0, 0]})
    cfg = JudgeConfig(seeds=3)
    assert _judge_all(judge, cfg, "binary").values == [0.0, 1.0, 0.0, 0.0]  # the majority
    assert _judge_all(judge, cfg, "expected").values == pytest.approx([1 / 3, 2 / 3, 0.0, 0.0])


def test_a_failed_judgment_stays_no_reward_under_either_mode():
    judge = ProbsJudge({"alpha": 0.3, "beta": 0.9, "gamma": 0.6}, fail=["gamma"])
    for reward in ("binary", "expected"):
        out = _judge_all(judge, JudgeConfig(verdict="probs"), reward)
        assert out.failed == [False, False, True, False] and out.invalid == 1 and out.values[2] == 0.0


def test_an_unknown_reward_is_refused():
    with pytest.raises(ValueError, match="unknown reward 'graded'"):
        _judge_all(ProbsJudge({}), JudgeConfig(verdict="probs"), "graded")


def test_the_reward_gate_scores_the_configured_reward_and_counts_differing_groups_as_mixed():
    judge = ProbsJudge({"alpha": 0.2, "beta": 0.45, "gamma": 0.05, "delta": 0.3})
    completions = [["t</think> alpha guess", "t</think> beta guess"], ["t</think> gamma guess", "t</think> delta guess"]]
    args = (judge, JudgeConfig(verdict="probs"), ["p0", "p1"], ["r0", "r1"], completions)
    binary, expected = reward_gate(*args), reward_gate(*args, reward="expected")
    assert binary.rewards == [[0.0, 0.0], [0.0, 0.0]] and binary.mixed_group_rate == 0.0
    assert binary.near_zero_variance_rate == 1.0 and not binary.passed
    assert sum(expected.rewards, []) == pytest.approx([0.2, 0.45, 0.05, 0.3]) and expected.mixed_group_rate == 1.0
    assert expected.near_zero_variance_rate == 0.0 and expected.passed
    assert expected.reward.estimate == pytest.approx(0.25)
