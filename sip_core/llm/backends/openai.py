"""Any OpenAI-compatible chat completions server (vLLM, OpenAI, a proxy) behind `LLMBackend`.

One `openai.AsyncOpenAI` client per base URL; requests go round-robin over them (a retry goes to the
next replica). The client's own retries are off (`max_retries=0`): this module retries, with
exponential backoff and full jitter bounded by `backoff_max_s`, on timeouts, connection errors,
unparseable responses, HTTP 408, 429 and 5xx (a `Retry-After`/`retry-after-ms` header, when present,
is honoured up to `backoff_max_s`); any other 4xx is final at once. A request that still fails gets a
result whose `error` is one line ("HTTP 500 after 6 attempts"); a batch never raises for one request.

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
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

from sip_core.config import LLMConfig
from sip_core.llm.types import LLMBackend, LLMRequest, LLMResult, Progress, ResultHook, run_sync

log = logging.getLogger(__name__)

NO_KEY = "EMPTY"
_RETRY_STATUS = {408, 429}  # plus every 5xx


class _Secret:
    """A string that does not show itself: repr/str give a placeholder."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


@dataclass
class _LoopState:
    clients: list[openai.AsyncOpenAI]
    sem: asyncio.Semaphore
    closer: AsyncGenerator[None, None] | None = None

    async def aclose(self) -> None:
        if self.closer is not None:
            await self.closer.aclose()
        else:
            await _close_all(self.clients)


class _Attempt(Exception):
    """How one attempt failed: `what` for the final message, whether to retry, how long to wait."""

    def __init__(self, what: str, retry: bool, wait_s: float | None = None, detail: str = "") -> None:
        super().__init__(what)
        self.what, self.retry, self.wait_s, self.detail = what, retry, wait_s, detail


def _redact_url(url: str) -> str:
    """Drop user:password@ from a URL (for repr and logs)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds, fractional allowed, or an
    HTTP date); None when absent or unreadable."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIBackend(LLMBackend):
    kind = "openai"

    def __init__(self, cfg: LLMConfig, api_key: str | None = None) -> None:
        self.cfg = cfg
        urls = [cfg.base_url] if isinstance(cfg.base_url, str) else list(cfg.base_url)
        urls = [u.strip() for u in urls if u and u.strip()]
        if not urls:
            raise ValueError("openai backend: base_url is empty")
        self.base_urls = urls
        key = api_key or os.environ.get(cfg.api_key_env) or NO_KEY
        self._key = _Secret(key)
        self.model_id = f"openai:{cfg.model}"
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "errors": 0,
                                      "prompt_tokens": 0, "completion_tokens": 0}
        self._stats_lock = threading.Lock()
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
        self._rr = 0
        self._rng = random.Random()

    def __repr__(self) -> str:
        urls = [_redact_url(u) for u in self.base_urls]
        return (f"OpenAIBackend(model={self.cfg.model!r}, base_urls={urls!r}, "
                f"concurrency={self.cfg.concurrency}, timeout_s={self.cfg.timeout_s})")

    __str__ = __repr__

    # -- helpers -----------------------------------------------------------------------------------

    def _scrub(self, text: str, limit: int = 200) -> str:
        """One line, at most `limit` characters, without the key."""
        key = self._key.reveal()
        if key and key != NO_KEY and len(key) >= 4:
            text = text.replace(key, "***")
        text = " ".join(str(text).split())
        return text if len(text) <= limit else text[: limit - 3] + "..."

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for k, v in deltas.items():
                self.stats[k] += v

    def _params(self, req: LLMRequest) -> dict[str, Any]:
        s, cfg = req.sampling, self.cfg
        params: dict[str, Any] = {
            "model": cfg.model,
            "messages": [dict(m) for m in req.messages],
            "temperature": cfg.temperature if cfg.temperature is not None else s.temperature,
            "top_p": cfg.top_p if cfg.top_p is not None else s.top_p,
            "max_tokens": cfg.max_tokens if cfg.max_tokens is not None else s.max_tokens,
        }
        if req.prefill is not None:  # vLLM's extension: continue the final assistant message
            params.update(continue_final_message=True, add_generation_prompt=False)
        if s.seed is not None:
            params["seed"] = s.seed
        if s.stop:
            params["stop"] = list(s.stop)
        return params

    async def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            clients = [openai.AsyncOpenAI(api_key=self._key.reveal(), base_url=url, max_retries=0,
                                          timeout=self.cfg.timeout_s, http_client=_http_client())
                       for url in self.base_urls]
            state = _LoopState(clients, asyncio.Semaphore(self.cfg.concurrency))
            self._states[loop] = state
            # An async generator parked in try/finally: the loop's shutdown (asyncio.run's
            # shutdown_asyncgens) finalizes it, closing the clients even without an aclose().
            state.closer = self._closer(loop, state)
            await state.closer.__anext__()
        return state

    async def _closer(self, loop: asyncio.AbstractEventLoop, state: _LoopState) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if self._states.get(loop) is state:
                del self._states[loop]
            await _close_all(state.clients)

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

    # -- one attempt, one request, a batch ---------------------------------------------------------

    async def _attempt(self, client: openai.AsyncOpenAI, params: dict[str, Any]) -> LLMResult:
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                # The documented way to call an endpoint untyped: the same auth, URL handling,
                # timeouts and status errors as `chat.completions.create`, without its per-call
                # TypedDict transform and pydantic model build (about half the client's CPU time).
                data = await client.post("/chat/completions", body=params, cast_to=object)
        except TimeoutError:
            raise _Attempt("timeout", retry=True) from None
        except openai.APIConnectionError as exc:  # APITimeoutError included: see _transport_failure
            raise _Attempt(_transport_failure(exc), retry=True) from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            retry = status in _RETRY_STATUS or status >= 500
            wait = parse_retry_after(exc.response.headers) if retry else None
            body = exc.body
            msg = body.get("message") if isinstance(body, dict) else body
            raise _Attempt(f"HTTP {status}", retry=retry, wait_s=wait,
                           detail="" if status in (401, 403) else self._scrub(str(msg or ""))) from None
        except openai.APIResponseValidationError:
            raise _Attempt("malformed response", retry=True) from None
        except ValueError:  # a 200 whose JSON body does not parse
            raise _Attempt("malformed response", retry=True) from None
        return _parse_completion(data)

    async def _one(self, state: _LoopState, req: LLMRequest, index: int) -> LLMResult:
        params = self._params(req)
        attempts = 0
        first = self._first_replica()
        async with state.sem:
            t0 = time.perf_counter()
            while True:
                attempts += 1
                replica = (first + attempts - 1) % len(state.clients)
                client = state.clients[replica]
                try:
                    result = await self._attempt(client, params)
                except _Attempt as fail:
                    if fail.retry and attempts <= self.cfg.max_retries:
                        wait = self._backoff(attempts, fail.wait_s)
                        self._count(retries=1)
                        log.debug("request %d: %s from replica %d (attempt %d of %d), retrying in %.2fs",
                                  index, fail.what, replica, attempts, self.cfg.max_retries + 1, wait)
                        await asyncio.sleep(wait)
                        continue
                    if fail.retry:
                        error = f"{fail.what} after {attempts} attempts"
                    else:
                        error = f"{fail.what}: {fail.detail}" if fail.detail else fail.what
                    result = LLMResult(text=None, error=error)
                    self._count(requests=1, errors=1)
                    log.debug("request %d failed: %s", index, error)
                except Exception as exc:  # noqa: BLE001 - one request never sinks the batch
                    error = self._scrub(f"{type(exc).__name__}: {exc}")
                    result = LLMResult(text=None, error=error)
                    self._count(requests=1, errors=1)
                    log.debug("request %d failed: %s", index, error)
                else:
                    self._count(requests=1, prompt_tokens=result.prompt_tokens,
                                completion_tokens=result.completion_tokens)
                    if req.prefill is not None and result.text is not None:
                        result.text = req.prefill + result.text  # parsers see the whole answer
                result.attempts = attempts
                result.latency_s = time.perf_counter() - t0
                return result

    async def agenerate(self, requests: Sequence[LLMRequest], progress: Progress | None = None,
                        on_result: ResultHook | None = None) -> list[LLMResult]:
        requests = list(requests)
        if not requests:
            return []
        state = await self._state()
        results: list[LLMResult | None] = [None] * len(requests)
        todo = iter(enumerate(requests))  # shared by the workers; the loop is single-threaded

        async def worker() -> None:
            for i, req in todo:
                results[i] = result = await self._one(state, req, i)
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


def _http_client() -> Any:
    """The aiohttp transport where this openai version has it (`openai[aiohttp]`; aiohttp comes with
    s3fs): its connection pool costs O(1) per request, httpx's scans every pooled connection, which
    at 128 connections takes more CPU than the request itself. None: the client's default (httpx)."""
    factory = getattr(openai, "DefaultAioHttpClient", None)
    if factory is None:
        return None
    try:
        return factory()
    except Exception:  # noqa: BLE001 - the aiohttp extra is missing: RuntimeError
        return None


def _transport_failure(exc: BaseException) -> str:
    """"timeout" or "connection error", from the innermost cause: the aiohttp transport reports
    every aiohttp connection error (refused, server hung up) as a connect *timeout*."""
    root = exc
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    if isinstance(root, TimeoutError) or "Timeout" in type(root).__name__:
        return "timeout"
    return "connection error"


def _parse_completion(data: Any) -> LLMResult:
    """A chat completion's JSON (a dict) -> LLMResult; anything else is a malformed response (a
    non-JSON 200 arrives here as a str). Missing or null content is text ""."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise _Attempt("malformed response", retry=True)
    choices = data["choices"]
    first = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = first.get("message") if isinstance(first.get("message"), dict) else {}
    content = message.get("content")
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    text = content if isinstance(content, str) else ("" if content is None else str(content))
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}

    def tokens(name: str) -> int:
        try:
            return int(usage.get(name) or 0)
        except (TypeError, ValueError):
            return 0

    return LLMResult(text=text, prompt_tokens=tokens("prompt_tokens"), completion_tokens=tokens("completion_tokens"))


async def _close_all(clients: list[openai.AsyncOpenAI]) -> None:
    for client in clients:
        try:
            await client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            log.debug("closing an openai client failed", exc_info=True)

