"""The request/result types every backend speaks, and the backend interface."""

from __future__ import annotations

import abc
import asyncio
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

Progress = Callable[[int], None]  # called with the number of requests just finished
ResultHook = Callable[[int, "LLMResult"], None]  # (request index, its result), as each one finishes


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def with_seed(self, seed: int) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.max_tokens, seed, self.stop)

    def override(self, values: Mapping[str, Any]) -> Sampling:
        """The one way sampling parameters are overridden (a render's `sampling_override`, a
        role's config): a copy with each value that is not None in place of this one's."""
        values = {k: v for k, v in values.items() if v is not None}
        return replace(self, **values) if values else self


ROLE_SAMPLING = ("temperature", "top_p", "max_tokens")  # what a role's LLMConfig may fix for every prompt


def role_sampling(cfg: Any) -> dict[str, Any]:
    """The sampling values a role's config fixes (an LLMConfig's temperature, top_p, max_tokens);
    None there means "the prompt's default", so those are left out."""
    return {k: v for k in ROLE_SAMPLING if (v := getattr(cfg, k)) is not None}


@dataclass(frozen=True)
class LLMRequest:
    """One chat completion. `prompt` is "name@version" of the template that rendered `messages`;
    `inputs` are the template's fields (never sent: the offline proxy judge reads them)."""

    messages: tuple[Mapping[str, str], ...]
    sampling: Sampling = Sampling()
    prompt: str = "raw@0"
    inputs: Mapping[str, Any] = field(default_factory=dict)
    # Probability verdicts (judge.verdict=probs): (label, continuation) pairs. The request ends
    # with the prefilled answer opening; instead of generating, the backend reads the probability
    # of each continuation as the next text (logits locally, logprobs from an endpoint) and
    # answers with `choice_answer`. Empty: an ordinary generation.
    choices: tuple[tuple[str, str], ...] = ()
    # Requests with a key in common open with the same text: the first key stands for a candidate
    # set's system text, instructions and document prefix, each further one for that opening and
    # the next field (the first candidate). An endpoint with a prefix cache computes an opening
    # once if one request with it is answered before the rest are sent. Not in the cache key.
    shared_keys: tuple[str, ...] = field(default=(), compare=False)

    @property
    def prefill(self) -> str | None:
        """The opening of the answer when the request ends with an assistant message."""
        last = self.messages[-1] if self.messages else {}
        return last.get("content") if last.get("role") == "assistant" else None

    def cache_key(self, model_id: str) -> str:
        """Hash of (model, prompt name + version, rendered messages, sampling params, seed)."""
        payload = {"model": model_id, "prompt": self.prompt, "messages": [dict(m) for m in self.messages],
                   "sampling": asdict(self.sampling)}
        if self.choices:  # the verdict mode is part of the key (generation keys stay as they were)
            payload["choices"] = [list(c) for c in self.choices]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class LLMResult:
    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None  # the final error once retries are spent; text is None then
    attempts: int = 1
    cached: bool = False
    choice_logprobs: dict[str, float] | None = None  # probs verdicts: log-probability per choice label

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


CHOICE_LINE = "choice logprobs: "  # first line of a probs verdict's stored text


def choice_answer(req: LLMRequest, logprobs: Mapping[str, float]) -> LLMResult:
    """The result of a probs verdict: the log-probabilities by label, stored in the text as a
    first line (the judgment cache keeps the text, so a rerun reads them back), then the prefilled
    opening and the most likely label, so the prompt's own parser reads the top verdict."""
    logprobs = {label: round(float(lp), 6) for label, lp in logprobs.items()}
    top = max(logprobs, key=logprobs.get)
    opening = (req.prefill or "").rstrip()
    text = f"{CHOICE_LINE}{json.dumps(logprobs, sort_keys=True)}\n{opening} {top}".rstrip()
    return LLMResult(text=text, completion_tokens=1, choice_logprobs=logprobs)


def read_choice_logprobs(text: str | None) -> dict[str, float] | None:
    """The label -> log-probability map a probs verdict stored (None for a sampled answer)."""
    if not text or not text.startswith(CHOICE_LINE):
        return None
    return json.loads(text[len(CHOICE_LINE):].split("\n", 1)[0])


def choices_from_top_logprobs(req: LLMRequest, top: Mapping[str, float]) -> dict[str, float] | None:
    """For an endpoint: each choice's log-probability from the first answer token's top
    logprobs (token text -> logprob). A token counts for a choice (log-sum-exp) when, up to
    surrounding whitespace, it is the choice's continuation or a start of it that starts no other
    choice: a tokenizer may split " YES" into " Y" + "ES", and then " Y" is the first token of
    YES. A choice absent from the list gets the smallest listed logprob minus log 2 (an upper
    bound, so it never wins). None when no choice is listed: the endpoint gave no usable logprobs."""
    texts = {label: continuation.strip() for label, continuation in req.choices}

    def counts_for(tok: str, label: str) -> bool:
        tok = tok.strip()
        return bool(tok) and texts[label].startswith(tok) and not any(
            other != label and t.startswith(tok) for other, t in texts.items())

    found: dict[str, float] = {}
    for label, _ in req.choices:
        hits = [lp for tok, lp in top.items() if counts_for(tok, label)]
        if hits:
            m = max(hits)
            found[label] = m + math.log(sum(math.exp(h - m) for h in hits))
    if not found:
        return None
    floor = min(top.values()) - math.log(2)
    return {label: found.get(label, floor) for label, _ in req.choices}


class LLMBackend(abc.ABC):
    """A model behind one interface. `model_id` names the model for cache keys and reports; it
    must change whenever the model's answers could (another checkpoint, another server model)."""

    kind: str = "abstract"
    model_id: str

    @abc.abstractmethod
    async def agenerate(self, requests: Sequence[LLMRequest], progress: Progress | None = None,
                        on_result: ResultHook | None = None) -> list[LLMResult]:
        """Results in request order. Never raises for a single failed request: its result carries
        `error`. Retries (where the backend has any) happen inside. `on_result` sees each result as
        soon as it exists, so callers can persist work before the whole batch ends."""

    def generate(self, requests: Sequence[LLMRequest], progress: Progress | None = None,
                 on_result: ResultHook | None = None) -> list[LLMResult]:
        return run_sync(self.agenerate(requests, progress, on_result))

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def run_sync(coro):
    """asyncio.run, also from inside a running loop (e.g. a notebook): run it in a fresh thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
