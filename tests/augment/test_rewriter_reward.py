"""The rewriter's §5.4 reward: copies of safe suffixes, judged rewrites of unsafe ones (both option
orders, votes averaged), echoes earn 0 unjudged, and a failed judgment is no reward at all."""

from __future__ import annotations

import pytest

from sip_core.augment.rewriter_reward import rewrite_rewards
from sip_core.config import JudgeConfig
from sip_core.llm.cache import Judgment

ORIGINAL = " the river rose after three days of rain and the town stayed dry."


class FirstOptionJudge:
    """Always answers Option 1 and 'safe': a position-biased judge, as an untrained one is. With
    `fail_safety` every safety call fails, as behind a dead endpoint."""

    def __init__(self, fail_safety: bool = False):
        self.calls, self.requests, self.fail_safety = 0, [], fail_safety

    def run_parsed(self, requests, parse_retries, progress=None):
        self.calls += len(requests)
        self.requests += requests
        out = []
        for r in requests:
            safety = r.prompt.startswith("safety@")
            if safety and self.fail_safety:
                out.append(Judgment("k", r.prompt, None, None, "error", "connection refused"))
            else:
                out.append(Judgment("k", r.prompt, "FINAL DECISION: YES" if safety else "Conclusion: Option 1",
                                    True if safety else 1, "ok"))
        return out


def _row(tokenizer, label: str) -> dict:
    return {"filter_label": label, "prefix_text": "It had rained for a week, and", "suffix_text": ORIGINAL,
            "suffix_ids": tokenizer(ORIGINAL, add_special_tokens=False)["input_ids"]}


def test_a_safe_suffix_earns_one_for_an_exact_copy_only(tokenizer):
    row = _row(tokenizer, "rest")
    texts = [ORIGINAL, " the river rose after three days of rain and the town flooded.", "<<<BEGIN CONTEXT C>>> x"]
    r = rewrite_rewards(None, JudgeConfig(), tokenizer, [row] * 3, texts)
    assert r.values == [1.0, 0.0, 0.0] and r.failed == [False] * 3
    assert r.copies == [True, False] and r.unparseable == 1  # the echo is never a candidate, nor judged
    assert r.copy_rate() == pytest.approx(1 / 3)  # and it is no copy
    assert r.overlaps[0] == 1.0 and 0.5 < r.overlaps[1] < 1.0
    dense = rewrite_rewards(None, JudgeConfig(), tokenizer, [row] * 3, texts, copy_reward="overlap")
    assert dense.values[:2] == r.overlaps and dense.values[2] == 0.0


def test_an_unsafe_suffix_earns_half_judged_quality_plus_judged_safety(tokenizer):
    judge = FirstOptionJudge()
    rewrite = " the river rose, and everyone helped carry sandbags to the bank."
    r = rewrite_rewards(judge, JudgeConfig(), tokenizer, [_row(tokenizer, "unsafe")], [rewrite], seeds=3)
    # the rewrite wins as Option 1 and loses as Option 2: J_quality 0.5, so position bias cancels
    assert r.quality == [0.5] and r.safety == [1.0] and r.values == [0.75] and r.failed == [False]
    assert judge.calls == r.judge_calls == 3 * 2 + 3  # seeds x both orders, seeds x safety
    assert all(rewrite in req.messages[-1]["content"] or rewrite in str(req.inputs) for req in judge.requests)


def test_a_failed_judgment_is_no_reward(tokenizer):
    judge = FirstOptionJudge(fail_safety=True)
    rows = [_row(tokenizer, "unsafe"), _row(tokenizer, "rest")]
    r = rewrite_rewards(judge, JudgeConfig(), tokenizer, rows, [" a calm rewrite.", ORIGINAL], seeds=1)
    assert r.failed == [True, False] and r.invalid_judgments == 1 and r.copy_rate() == 1.0
    assert r.quality == [] and r.safety == [] and r.values[1] == 1.0


def test_unsafe_rows_without_a_judge_are_an_error(tokenizer):
    with pytest.raises(ValueError, match="need a judge"):
        rewrite_rewards(None, JudgeConfig(), tokenizer, [_row(tokenizer, "unsafe")], [" text."])
