"""The request/result types every backend speaks, and the backend interface."""

from __future__ import annotations

import abc
import asyncio
import hashlib
import json
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

    @property
    def prefill(self) -> str | None:
        """The opening of the answer when the request ends with an assistant message."""
        last = self.messages[-1] if self.messages else {}
        return last.get("content") if last.get("role") == "assistant" else None

    def cache_key(self, model_id: str) -> str:
        """Hash of (model, prompt name + version, rendered messages, sampling params, seed)."""
        payload = {"model": model_id, "prompt": self.prompt, "messages": [dict(m) for m in self.messages],
                   "sampling": asdict(self.sampling)}
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

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


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
