"""How a judge role is asked: which prompt per task, prefilled or not, sampled or read as
probabilities, and at which text lengths.

A plain judge uses the standard prompts (`quality`, `safety`, ...). A judge checkpoint trained by
`sip train-judge` carries a card (`sip_judge` in its config.json) naming the prompt versions, the
verdict mode, the prefill and the prefix/option token lengths it was trained with; pointing
`judge.model` (or `eval_judge.model`) at it uses them with no further flags (`judge.verdict` set
explicitly still wins).

With `verdict: probs` a request for a task with closed options (quality, safety, rlmt_judge) is
prefilled up to the choice and carries its options (`LLMRequest.choices`): the backend returns each
option's log-probability in one call. Seeds are dropped from such requests, so S seeded votes
become one call and one cached answer. `verdict_share` turns any judgment into the probability of
one verdict: the renormalised option probability for a probs answer, 0 or 1 for a sampled one.
Other tasks (factuality, coherence) are always sampled.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sip_core.llm.prompting import Prompt, load_prompt
from sip_core.llm.types import LLMRequest, Sampling, read_choice_logprobs

# task -> label -> continuation after the prefilled opening (the standard prompts' openings end
# without a space: "Conclusion: Option", "FINAL DECISION:", '{"score": ')
DEFAULT_OPTIONS: dict[str, dict[str, str]] = {"quality": {"1": " 1", "2": " 2"},
                                              "safety": {"YES": " YES", "NO": " NO"},
                                              "rlmt_judge": {"0": "0", "1": "1"}}
# label -> the parsed value the task's parser gives that verdict
LABEL_VALUES: dict[str, dict[str, Any]] = {"quality": {"1": 1, "2": 2}, "safety": {"YES": True, "NO": False},
                                           "rlmt_judge": {"0": 0, "1": 1}}
CUT_FIELDS = {"prefix": "last", "option_1": "first", "option_2": "first", "text": "first"}


def judge_card(model: str) -> dict | None:
    """The trained-judge card of a model folder (None: not a trained judge)."""
    try:
        from sip_core.recipes.train_judge import judge_card as read_card
    except ImportError:  # the train-judge recipe is not installed in this tree
        return None
    try:
        return read_card(model)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class JudgeSpec:
    verdict: str = "sample"
    prefill: bool = False
    prompts: Mapping[str, str] = field(default_factory=dict)  # task -> prompt key ("judge_quality@1")
    options: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: DEFAULT_OPTIONS)
    prefix_tokens: int | None = None
    option_tokens: int | None = None
    tokenizer: str | None = None  # the folder whose tokenizer cuts texts to the trained lengths

    def prompt(self, task: str) -> Prompt:
        return load_prompt(self.prompts.get(task, task))

    def probs(self, task: str) -> bool:
        return self.verdict == "probs" and task in self.options and task in LABEL_VALUES

    def render(self, task: str, sampling: Mapping[str, Any] | None = None, **fields: Any) -> LLMRequest:
        """A request for `task` the way this judge is asked (prompt version, prefill, cuts, verdict mode)."""
        if self.tokenizer and (self.prefix_tokens or self.option_tokens):
            fields = {k: self.cut(k, v) for k, v in fields.items()}
        probs = self.probs(task)
        req = self.prompt(task).render(sampling, self.prefill or probs, **fields)
        if not probs:
            return req
        # one call gives the expected vote: the seed and temperature do not change it
        return replace(req, sampling=Sampling(temperature=0.0, top_p=1.0, max_tokens=1),
                       choices=tuple(self.options[task].items()))

    def cut(self, name: str, value: Any) -> Any:
        """`value` as this judge reads field `name`: a prefix's last, an option's first tokens."""
        side, limit = CUT_FIELDS.get(name), self.prefix_tokens if name == "prefix" else self.option_tokens
        if side is None or not limit or not isinstance(value, str):
            return value
        tok = _tokenizer(self.tokenizer)
        ids = tok(value, add_special_tokens=False)["input_ids"]
        if len(ids) <= limit:
            return value
        return tok.decode(ids[-limit:] if side == "last" else ids[:limit])


@functools.lru_cache(maxsize=8)
def _tokenizer(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def judge_spec(role_cfg) -> JudgeSpec:
    """The spec of a judge role's config (a JudgeConfig): its card's, where it has one."""
    card = judge_card(role_cfg.model) if role_cfg.backend != "proxy" else None
    verdict = role_cfg.verdict or (card or {}).get("verdict") or "sample"
    if not card:
        return JudgeSpec(verdict=verdict, prefill=role_cfg.prefill)
    options = {**DEFAULT_OPTIONS, **{k: dict(v) for k, v in (card.get("options") or {}).items()}}
    return JudgeSpec(verdict=verdict, prefill=bool(card.get("prefill", role_cfg.prefill)),
                     prompts=dict(card.get("prompts") or {}), options=options,
                     prefix_tokens=card.get("prefix_tokens"), option_tokens=card.get("option_tokens"),
                     tokenizer=role_cfg.model)


def verdict_probs(judgment, task: str) -> dict[Any, float] | None:
    """Parsed value -> probability of a valid judgment (None when it failed): a probs answer's
    option probabilities renormalised over the options, else all mass on the parsed value."""
    if not judgment.ok:
        return None
    logprobs = read_choice_logprobs(judgment.text)
    if not logprobs or task not in LABEL_VALUES:
        return {judgment.value: 1.0}
    top = max(logprobs.values())
    weights = {LABEL_VALUES[task][label]: math.exp(lp - top) for label, lp in logprobs.items()}
    total = sum(weights.values())
    return {value: w / total for value, w in weights.items()}


def expected_verdict(judgment, task: str) -> float | None:
    """The verdict's expected value under the judgment's option probabilities (None when it failed)."""
    probs = verdict_probs(judgment, task)
    return None if probs is None else sum(float(v) * p for v, p in probs.items())


def verdict_share(judgment, task: str, value: Any) -> float | None:
    """The probability that `judgment` says `value` (None when it failed)."""
    probs = verdict_probs(judgment, task)
    return None if probs is None else probs.get(value, 0.0)


PROBE_FIELDS = {"quality": {"prefix": "The cat sat on the mat.", "option_1": " It purred.", "option_2": " It purred."},
                "safety": {"text": "The cat sat on the mat."}, "rlmt_judge": {}}


def check_verdicts(backend, role_cfg) -> None:
    """Before any training: a probs judge must return option probabilities. ConfigError (one
    line, exit 2) for an endpoint that returns no logprobs or a tokenizer that cannot tell the
    options apart. Asks the backend directly (one tiny request per task), never the cache."""
    from sip_core.config import ConfigError

    spec = judge_spec(role_cfg)
    if role_cfg.backend == "proxy":
        return
    for task in ("quality", "safety"):
        if not spec.probs(task):
            continue
        result = backend.generate([spec.render(task, None, **PROBE_FIELDS[task])])[0]
        if result.choice_logprobs is None:
            where = f" at {role_cfg.base_url}" if role_cfg.backend == "openai" else ""
            why = result.error or "the endpoint returned no logprobs"
            raise ConfigError(f"judge {role_cfg.model}{where} cannot give verdict=probs for {task}: {why}")
