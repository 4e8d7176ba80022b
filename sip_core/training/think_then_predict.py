"""The thought-then-prediction format of RLMT (method §7) and its reward.

From a prefix the policy writes `<think> thought </think>` and then its predicted continuation.
The judge compares the prediction with the true suffix and answers 0 or 1. A completion without
a closing tag has no prediction and earns 0 (counted as a format failure, never judged).

The reward is that binary verdict (`reward: binary`, METHOD §5.6: the majority of the votes, or
P(1) > 0.5 from a probs judge), or its expectation over the judge's own sampling (`reward:
expected`: P(1) from a probs judge, the share of 1-votes over seeds). Both estimate the same E[r];
the expected one has no sampling noise and still differs between predictions when a small judge's
verdict never crosses 0.5, so a group gets a signal where the binary reward gives none.

`think_then_predict` samples in two phases with a thought budget: when the thought has not closed
within its budget, the sampler writes `</think>` itself (budget forcing) and the policy then
predicts. The forced tag tokens are marked so the policy gradient skips them: they were never
sampled. A small model that rambles past any budget still yields predictions, hence reward signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sip_core.config import JudgeConfig
from sip_core.llm.cache import CachedLLM
from sip_core.llm.thought_markup import THINK_CLOSE


def split_completion(text: str) -> tuple[str | None, str | None]:
    """(thought, prediction) of a completion that follows a `<think>` opener; (None, None)
    when the thought never closes."""
    if THINK_CLOSE not in text:
        return None, None
    thought, prediction = text.split(THINK_CLOSE, 1)
    return thought.strip(), prediction.lstrip()


@dataclass
class ThinkSample:
    """One completion after `prefix <think>`: token ids = thought (+ forced close) + prediction."""
    ids: list[int]
    forced: tuple[int, int] | None = None  # [start, end) of close-tag tokens the sampler inserted
    prediction_ids: list[int] = field(default_factory=list)


def _closing_length(tokenizer, ids: list[int]) -> int | None:
    """The fewest leading tokens of `ids` whose text contains `</think>`; None if none does."""
    if THINK_CLOSE not in tokenizer.decode(ids):
        return None
    return next(k for k in range(1, len(ids) + 1) if THINK_CLOSE in tokenizer.decode(ids[:k]))


def think_then_predict(engine, tokenizer, prompts: Sequence[Sequence[int]], n: int, thought_tokens: int,
                       predict_tokens: int, temperature: float, top_p: float, seed: int,
                       force_close: bool = True) -> list[list[ThinkSample]]:
    """n samples per prompt (token ids ending in `<think>`): a thought of at most thought_tokens,
    closed by the policy or (force_close) by the sampler, then a prediction of at most
    predict_tokens. Without force_close an unclosed thought gets no prediction (format failure)."""
    from sip_core.training.rollout import SamplingSpec  # torch is only needed once we sample

    close_ids = tokenizer(THINK_CLOSE, add_special_tokens=False)["input_ids"]
    spec = SamplingSpec(thought_tokens, temperature, top_p, exact_length=False, seed=seed)
    thoughts = engine.generate(prompts, n, spec)
    samples: list[list[ThinkSample]] = []
    todo: list[tuple[list[int], ThinkSample]] = []
    for prompt, group in zip(prompts, thoughts):
        samples.append([])
        for ids in group:
            k = _closing_length(tokenizer, ids)
            if k is not None:
                sample = ThinkSample(list(ids[:k]))
            elif force_close:
                sample = ThinkSample(list(ids) + close_ids, forced=(len(ids), len(ids) + len(close_ids)))
            else:
                samples[-1].append(ThinkSample(list(ids)))
                continue
            samples[-1].append(sample)
            todo.append((list(prompt) + sample.ids, sample))
    if todo:
        spec = SamplingSpec(predict_tokens, temperature, top_p, exact_length=False, seed=seed + 1)
        for (_, sample), [prediction] in zip(todo, engine.generate([p for p, _ in todo], 1, spec)):
            sample.prediction_ids = list(prediction)
            sample.ids += sample.prediction_ids
    return samples


def unmask_forced(mask, prompts, samples):
    """Drop the close-tag tokens the sampler forced from the loss mask of `completion_logprobs`
    (column j of the mask scores token j + 1): the policy never sampled them."""
    mask = mask.clone()
    for i, (prompt, sample) in enumerate(zip(prompts, samples)):
        if sample.forced:
            a, b = sample.forced
            mask[i, len(prompt) + a - 1:len(prompt) + b - 1] = False
    return mask


@dataclass
class Rewards:
    values: list[float]
    format_failures: int
    invalid: int  # judgments that failed or never parsed (counted)
    calls: int
    failed: list[bool] = field(default_factory=list)  # per prediction: a judgment of it failed, so its value is no reward

    def __post_init__(self) -> None:
        self.failed = self.failed or [False] * len(self.values)


REWARDS = ("binary", "expected")


def judge_predictions(judge: CachedLLM, cfg: JudgeConfig, prefixes: Sequence[str],
                      predictions: Sequence[str | None], references: Sequence[str], seed: int = 0,
                      reward: str = "binary") -> Rewards:
    """Rewards of each (prefix, prediction, reference) from cfg.seeds judgments (one with probs):
    binary, 1 when the mean vote is over 0.5; expected, the mean vote itself."""
    if reward not in REWARDS:
        raise ValueError(f"unknown reward {reward!r}; known: {', '.join(REWARDS)}")
    from sip_core.judge.spec import expected_verdict, judge_spec

    spec = judge_spec(cfg)  # a trained judge is asked its own way (prompt version, prefill, probs)
    todo = [(i, s) for i, p in enumerate(predictions) if p
            for s in range(1 if spec.probs("rlmt_judge") else cfg.seeds)]
    requests = [spec.render("rlmt_judge", {"seed": seed * 1000 + s}, prefix=prefixes[i],
                            reference=references[i], prediction=predictions[i]) for i, s in todo]
    before = judge.calls
    judgments = judge.run_parsed(requests, cfg.parse_retries) if requests else []
    votes: dict[int, list[float]] = {}
    failed = [False] * len(predictions)
    for (i, _), j in zip(todo, judgments):
        if j.ok:
            vote = expected_verdict(j, "rlmt_judge") if reward == "expected" else float(j.value)
            votes.setdefault(i, []).append(vote)
        else:
            failed[i] = True
    means = [sum(votes[i]) / len(votes[i]) if votes.get(i) else 0.0 for i in range(len(predictions))]
    values = means if reward == "expected" else [1.0 if m > 0.5 else 0.0 for m in means]
    return Rewards(values, sum(1 for p in predictions if not p), sum(1 for _, j in zip(todo, judgments) if not j.ok),
                   judge.calls - before, failed)
