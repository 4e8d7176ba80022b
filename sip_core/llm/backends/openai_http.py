"""One HTTP attempt at a chat completion, and what its failure means for a retry.

An attempt either returns an `LLMResult` or raises `AttemptFailed`, which says what went wrong
(for the final one-line error), whether a retry may help (timeouts, connection errors,
unparseable responses, HTTP 408, 429 and 5xx), and how long the server asked us to wait.
Also here: the per-event-loop clients (`LoopState`) and their transport.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import openai

from sip_core.llm.types import LLMResult

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 429}  # plus every 5xx


class AttemptFailed(Exception):
    """How one attempt failed: `what` for the final message, whether to retry, how long to wait."""

    def __init__(self, what: str, retry: bool, wait_s: float | None = None, detail: str = "") -> None:
        super().__init__(what)
        self.what, self.retry, self.wait_s, self.detail = what, retry, wait_s, detail


async def post_completion(client: openai.AsyncOpenAI, params: dict[str, Any], timeout_s: float,
                          scrub: Callable[[str], str]) -> LLMResult:
    """One request to one replica, bounded by `timeout_s` in total; `scrub` cleans server texts."""
    try:
        async with asyncio.timeout(timeout_s):
            # The documented way to call an endpoint untyped: the same auth, URL handling,
            # timeouts and status errors as `chat.completions.create`, without its per-call
            # TypedDict transform and pydantic model build (about half the client's CPU time).
            data = await client.post("/chat/completions", body=params, cast_to=object)
    except TimeoutError:
        raise AttemptFailed("timeout", retry=True) from None
    except openai.APIConnectionError as exc:  # APITimeoutError included: see transport_failure
        raise AttemptFailed(transport_failure(exc), retry=True) from None
    except openai.APIStatusError as exc:
        status = exc.status_code
        retry = status in RETRY_STATUS or status >= 500
        wait = parse_retry_after(exc.response.headers) if retry else None
        body = exc.body
        msg = body.get("message") if isinstance(body, dict) else body
        raise AttemptFailed(f"HTTP {status}", retry=retry, wait_s=wait,
                            detail="" if status in (401, 403) else scrub(str(msg or ""))) from None
    except openai.APIResponseValidationError:
        raise AttemptFailed("malformed response", retry=True) from None
    except ValueError:  # a 200 whose JSON body does not parse
        raise AttemptFailed("malformed response", retry=True) from None
    return parse_completion(data)


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


def transport_failure(exc: BaseException) -> str:
    """"timeout" or "connection error", from the innermost cause: the aiohttp transport reports
    every aiohttp connection error (refused, server hung up) as a connect *timeout*."""
    root = exc
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    if isinstance(root, TimeoutError) or "Timeout" in type(root).__name__:
        return "timeout"
    return "connection error"


def parse_completion(data: Any) -> LLMResult:
    """A chat completion's JSON (a dict) -> LLMResult; anything else is a malformed response (a
    non-JSON 200 arrives here as a str). Missing or null content is text ""."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise AttemptFailed("malformed response", retry=True)
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


@dataclass
class LoopState:
    """The clients of one event loop (one per base URL) and its slot semaphore."""

    clients: list[openai.AsyncOpenAI]
    sem: asyncio.Semaphore
    closer: AsyncGenerator[None, None] | None = None

    async def aclose(self) -> None:
        if self.closer is not None:
            await self.closer.aclose()
        else:
            await close_all(self.clients)


def http_client() -> Any:
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


async def close_all(clients: list[openai.AsyncOpenAI]) -> None:
    for client in clients:
        try:
            await client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            log.debug("closing an openai client failed", exc_info=True)
