"""The thought-then-prediction format of RLMT (method §7) and its reward.

From a prefix the policy writes `<think> thought </think>` and then its predicted continuation.
The judge compares the prediction with the true suffix and answers 0 or 1. A completion without
a closing tag has no prediction and earns 0 (counted as a format failure, never judged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sip_core.config import JudgeConfig
from sip_core.llm.cache import CachedLLM
from sip_core.llm.prompting import load_prompt

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_completion(text: str) -> tuple[str | None, str | None]:
    """(thought, prediction) of a completion that follows a `<think>` opener; (None, None)
    when the thought never closes."""
    if THINK_CLOSE not in text:
        return None, None
    thought, prediction = text.split(THINK_CLOSE, 1)
    return thought.strip(), prediction.lstrip()


@dataclass
class Rewards:
    values: list[float]
    format_failures: int
    invalid: int  # judgments that never parsed (scored 0, counted)
    calls: int


def judge_predictions(judge: CachedLLM, cfg: JudgeConfig, prefixes: Sequence[str],
                      predictions: Sequence[str | None], references: Sequence[str], seed: int = 0) -> Rewards:
    """Binary rewards: majority over cfg.seeds judgments of each (prefix, prediction, reference)."""
    prompt = load_prompt("rlmt_judge")
    todo = [(i, s) for i, p in enumerate(predictions) if p for s in range(cfg.seeds)]
    requests = [prompt.render({"seed": seed * 1000 + s}, cfg.prefill, prefix=prefixes[i],
                              reference=references[i], prediction=predictions[i]) for i, s in todo]
    before = judge.calls
    judgments = judge.run_parsed(requests, cfg.parse_retries) if requests else []
    votes: dict[int, list[float]] = {}
    invalid = 0
    for (i, _), j in zip(todo, judgments):
        if j.ok:
            votes.setdefault(i, []).append(float(j.value))
        else:
            invalid += 1
    values = [1.0 if votes.get(i) and sum(votes[i]) / len(votes[i]) > 0.5 else 0.0 for i in range(len(predictions))]
    return Rewards(values, sum(1 for p in predictions if not p), invalid, judge.calls - before)
