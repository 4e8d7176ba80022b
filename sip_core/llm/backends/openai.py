"""Any OpenAI-compatible chat completions server (vLLM, OpenAI, a proxy) behind `LLMBackend`.

One keep-alive HTTP/1.1 connection pool per base URL (`http1.Origin`, not the openai SDK: its
request building was most of the client's CPU); requests go round-robin over them (a retry goes to
the next replica). This module retries, with
exponential backoff and full jitter bounded by `backoff_max_s`, on timeouts, connection errors,
unparseable responses, HTTP 408, 429 and 5xx (a `Retry-After`/`retry-after-ms` header, when present,
is honoured up to `backoff_max_s`); any other 4xx (401, 403, 404, ...) is final at once. A request
that still fails gets a result whose `error` is one line naming the status, the URL and the server's
own message ("HTTP 401 from http://…/v1: Incorrect API key provided"; "HTTP 500 after 6 attempts
(last: http://…/v1): overloaded"); a batch never raises for one request.

Concurrency: at most `cfg.concurrency` requests in flight per event loop (an asyncio.Semaphore, held
through a request's backoff sleeps too, so a rate-limited server is not hit harder). Each attempt is
bounded by `cfg.timeout_s` in total, not only per read. `latency_s` runs from the first attempt's
start to the result (backoff included, queueing for a slot excluded).

The API key: the explicit argument, else `$<cfg.api_key_env>`, else "EMPTY" (what vLLM accepts). It
is sent as the Bearer token and nowhere else: not in `model_id`, `repr`, log records or error texts
(server error messages are scrubbed of it).

Clients and connection pools belong to one event loop. `agenerate` keeps them per loop until
`aclose()` or the loop's shutdown (asyncio.run finalizes them); `generate()` (a fresh loop per
call) opens and closes its own within the call.

This module holds the batching and retry loop; one HTTP attempt and its failure kinds are in
`openai_http`, keeping the key out of texts in `openai_redact`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sip_core.config import LLMConfig
from sip_core.llm.backends.http1 import Origin
from sip_core.llm.backends.openai_http import (AttemptFailed, LoopState, close_all, encode_body,
                                               first_token_top_logprobs, parse_completion, parse_retry_after,
                                               post_completion)
from sip_core.llm.backends.openai_redact import NO_KEY, Secret, redact_url, scrub
from sip_core.llm.types import (LLMBackend, LLMRequest, LLMResult, Progress, ResultHook, choice_answer,
                                choices_from_top_logprobs, role_sampling, run_sync)

TOP_LOGPROBS = 20  # how many of the first answer token's alternatives a probs verdict reads

__all__ = ["NO_KEY", "OpenAIBackend", "parse_retry_after"]

log = logging.getLogger(__name__)


def warm_prefix_order(requests: Sequence[LLMRequest]) -> tuple[list[tuple[int, LLMRequest]], dict[int, int]]:
    """The order to send `requests` in, and for each request that must wait, the request it
    waits for. Sent together, requests that open with the same text each miss vLLM's prefix
    cache (it holds only what an earlier step computed). So for each shared key (an opening) its
    first request leads: the first of a set goes alone, then the first of each deeper opening
    (each first candidate), then the rest, each once the leader of its deepest opening that it
    does not lead itself is answered. Leaders of shallower openings are queued first, so no
    worker waits on a request no worker holds."""
    leader: dict[str, int] = {}
    for i, req in enumerate(requests):
        for key in req.shared_keys:
            leader.setdefault(key, i)
    waits_for: dict[int, int] = {}
    wave: dict[int, int] = {}  # 0: the first of a set, 1: the first of a deeper opening, ...
    for i, req in enumerate(requests):
        led = [leader[k] == i for k in req.shared_keys]
        wave[i] = led.index(True) if True in led else len(led)
        if wave[i]:
            waits_for[i] = leader[req.shared_keys[wave[i] - 1]]
    order = sorted(enumerate(requests), key=lambda item: wave[item[0]])  # stable: request order within a wave
    return order, waits_for


class OpenAIBackend(LLMBackend):
    kind = "openai"

    def __init__(self, cfg: LLMConfig, api_key: str | None = None) -> None:
        self.cfg = cfg
        urls = [cfg.base_url] if isinstance(cfg.base_url, str) else list(cfg.base_url)
        urls = [u.strip() for u in urls if u and u.strip()]
        if not urls:
            raise ValueError("openai backend: base_url is empty")
        for url in urls:
            Origin(url, {})  # a URL that is not http(s) is a config error now, not at the first request
        self.base_urls = urls
        key = api_key or os.environ.get(cfg.api_key_env) or NO_KEY
        self._key = Secret(key)
        self.model_id = f"openai:{cfg.model}"
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "errors": 0,
                                      "prompt_tokens": 0, "completion_tokens": 0}
        self._stats_lock = threading.Lock()
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopState] = weakref.WeakKeyDictionary()
        self._rr = 0
        self._rng = random.Random()

    def __repr__(self) -> str:
        urls = [redact_url(u) for u in self.base_urls]
        return (f"OpenAIBackend(model={self.cfg.model!r}, base_urls={urls!r}, "
                f"concurrency={self.cfg.concurrency}, timeout_s={self.cfg.timeout_s})")

    __str__ = __repr__

    # -- helpers -----------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return scrub(text, self._key)

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for k, v in deltas.items():
                self.stats[k] += v

    def _params(self, req: LLMRequest) -> dict[str, Any]:
        s = req.sampling.override(role_sampling(self.cfg))
        params: dict[str, Any] = {"model": self.cfg.model, "messages": [dict(m) for m in req.messages],
                                  "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
        if req.prefill is not None:  # vLLM's extension: continue the final assistant message
            params.update(continue_final_message=True, add_generation_prompt=False)
        if s.seed is not None:
            params["seed"] = s.seed
        if s.stop:
            params["stop"] = list(s.stop)
        if req.choices:  # a probs verdict: the first answer token's alternatives, not a sample
            params.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        return params

    @staticmethod
    def _answer(req: LLMRequest, data: dict) -> LLMResult:
        """The result a successful response means: the text (after the prefilled opening), or for
        a probs verdict each choice's log-probability (`types.choice_answer`)."""
        result = parse_completion(data)
        if not req.choices:
            if req.prefill is not None and result.text is not None:
                result.text = req.prefill + result.text  # parsers see the whole answer
            return result
        lp = choices_from_top_logprobs(req, first_token_top_logprobs(data))
        if lp is None:
            return LLMResult(text=None, error="the endpoint returned no logprobs")
        answer = choice_answer(req, lp)
        answer.prompt_tokens, answer.completion_tokens = result.prompt_tokens, result.completion_tokens
        return answer

    async def _state(self) -> LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            auth = {"Authorization": f"Bearer {self._key.reveal()}"}
            origins = [Origin(url, auth) for url in self.base_urls]
            state = LoopState(origins, asyncio.Semaphore(self.cfg.concurrency))
            self._states[loop] = state
            # An async generator parked in try/finally: the loop's shutdown (asyncio.run's
            # shutdown_asyncgens) finalizes it, closing the clients even without an aclose().
            state.closer = self._closer(loop, state)
            await state.closer.__anext__()
        return state

    async def _closer(self, loop: asyncio.AbstractEventLoop, state: LoopState) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if self._states.get(loop) is state:
                del self._states[loop]
            await close_all(state.origins)

    def _first_replica(self) -> int:
        """Round-robin: request k's first attempt goes to replica k mod n; its retries go on from
        there (attempt a to replica k + a - 1), so a dead replica never gets all of one request's."""
        start = self._rr
        self._rr += 1
        return start

    def _backoff(self, retry_no: int, hint: float | None) -> float:
        cap = self.cfg.backoff_max_s
        if hint is not None:
            return min(hint, cap)
        return self._rng.uniform(0.0, min(cap, self.cfg.backoff_s * 2.0 ** (retry_no - 1)))

    # -- one request, a batch ---------------------------------------------------------

    async def _one(self, state: LoopState, req: LLMRequest, index: int) -> LLMResult:
        body = encode_body(self._params(req))
        attempts = 0
        first = self._first_replica()
        async with state.sem:
            t0 = time.perf_counter()
            while True:
                attempts += 1
                replica = (first + attempts - 1) % len(state.origins)
                try:
                    result = self._answer(req, await post_completion(state.origins[replica], body,
                                                                     self.cfg.timeout_s, self._scrub))
                except AttemptFailed as fail:
                    if fail.retry and attempts <= self.cfg.max_retries:
                        wait = self._backoff(attempts, fail.wait_s)
                        self._count(retries=1)
                        log.debug("request %d: %s from replica %d (attempt %d of %d), retrying in %.2fs",
                                  index, fail.what, replica, attempts, self.cfg.max_retries + 1, wait)
                        await asyncio.sleep(wait)
                        continue
                    result = self._failed(index, _final_error(fail, attempts, redact_url(self.base_urls[replica])))
                except Exception as exc:  # noqa: BLE001 - one request never sinks the batch
                    result = self._failed(index, self._scrub(f"{type(exc).__name__}: {exc}"))
                else:
                    self._count(requests=1, errors=int(result.error is not None), prompt_tokens=result.prompt_tokens,
                                completion_tokens=result.completion_tokens)
                result.attempts = attempts
                result.latency_s = time.perf_counter() - t0
                return result

    def _failed(self, index: int, error: str) -> LLMResult:
        self._count(requests=1, errors=1)
        log.debug("request %d failed: %s", index, error)
        return LLMResult(text=None, error=error)

    async def agenerate(self, requests: Sequence[LLMRequest], progress: Progress | None = None,
                        on_result: ResultHook | None = None) -> list[LLMResult]:
        requests = list(requests)
        if not requests:
            return []
        state = await self._state()
        results: list[LLMResult | None] = [None] * len(requests)
        order, waits_for = warm_prefix_order(requests)
        answered = {j: asyncio.Event() for j in set(waits_for.values())}
        todo = iter(order)  # shared by the workers; the loop is single-threaded

        async def worker() -> None:
            for i, req in todo:
                if i in waits_for:
                    await answered[waits_for[i]].wait()
                try:
                    results[i] = result = await self._one(state, req, i)
                finally:  # answered or failed, the requests waiting for it go on
                    if i in answered:
                        answered[i].set()
                if on_result is not None:
                    on_result(i, result)
                if progress is not None:
                    progress(1)

        await asyncio.gather(*(worker() for _ in range(min(self.cfg.concurrency, len(requests)))))
        failed = [r for r in results if r is not None and r.error is not None]
        if failed:
            log.warning("%s: %d of %d requests failed (first: %s)", self.model_id, len(failed), len(requests),
                        failed[0].error)
        return results  # type: ignore[return-value]

    def generate(self, requests: Sequence[LLMRequest], progress: Progress | None = None,
                 on_result: ResultHook | None = None) -> list[LLMResult]:
        async def once() -> list[LLMResult]:
            try:
                return await self.agenerate(requests, progress, on_result)
            finally:
                await self.aclose()

        return run_sync(once())

    # -- closing -----------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the clients of the running event loop (the loop's shutdown would, too)."""
        state = self._states.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state.aclose()

    def close(self) -> None:
        """Close every client this backend opened, on whichever loop still can; a loop that is
        already closed closed its clients at its shutdown."""
        states = list(self._states.items())
        self._states.clear()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, state in states:
            if loop.is_closed():
                continue
            if loop is running:
                loop.create_task(state.aclose())
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(state.aclose(), loop).result(timeout=30)
            else:
                loop.run_until_complete(state.aclose())


def _final_error(fail: AttemptFailed, attempts: int, url: str) -> str:
    """The one-line error of a request whose last attempt failed, naming the endpoint that
    answered last (credentials dropped from the URL; the key never appears)."""
    where = f"after {attempts} attempts (last: {url})" if fail.retry else f"from {url}"
    return f"{fail.what} {where}: {fail.detail}" if fail.detail else f"{fail.what} {where}"
