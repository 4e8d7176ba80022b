"""One HTTP attempt at a chat completion, and what its failure means for a retry.

An attempt either returns an `LLMResult` or raises `AttemptFailed`, which says what went wrong
(for the final one-line error: the HTTP status and the server's own message, e.g. a 401 body's
`error.message`, scrubbed of the key), whether a retry may help (timeouts, connection errors,
unparseable responses, HTTP 408, 429 and 5xx; never 401/403/404 or another 4xx), and how long the
server asked us to wait. The bytes go over `http1.Origin` (a lean keep-alive HTTP/1.1 client: the
openai SDK's request building was most of the client's CPU per request). Also here: the
per-event-loop connections (`LoopState`).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from sip_core.llm.backends.http1 import ConnectionFailed, Origin
from sip_core.llm.types import LLMResult

RETRY_STATUS = {408, 429}  # plus every 5xx


class AttemptFailed(Exception):
    """How one attempt failed: `what` for the final message, whether to retry, how long to wait."""

    def __init__(self, what: str, retry: bool, wait_s: float | None = None, detail: str = "") -> None:
        super().__init__(what)
        self.what, self.retry, self.wait_s, self.detail = what, retry, wait_s, detail


def encode_body(params: dict[str, Any]) -> bytes:
    return json.dumps(params, ensure_ascii=False, separators=(",", ":")).encode()


async def post_completion(origin: Origin, body: bytes, timeout_s: float, scrub: Callable[[str], str]) -> dict:
    """One request (`body`: the encoded chat-completion params) to one replica, bounded by
    `timeout_s` in total; `scrub` cleans server texts of the key. Returns the response's JSON
    object (read it with `parse_completion`, or `parse_choice_logprobs` for a probs verdict)."""
    try:
        async with asyncio.timeout(timeout_s):
            response = await origin.post("/chat/completions", body)
    except TimeoutError:
        raise AttemptFailed("timeout", retry=True) from None
    except ConnectionFailed:  # no server words to quote: refused, reset or closed early
        raise AttemptFailed("connection error", retry=True) from None
    except ValueError:  # a garbled length or chunk size
        raise AttemptFailed("malformed response", retry=True) from None
    status = response.status
    if not 200 <= status < 300:
        retry = status in RETRY_STATUS or status >= 500
        wait = parse_retry_after(response.headers) if retry else None
        raise AttemptFailed(f"HTTP {status}", retry=retry, wait_s=wait, detail=scrub(server_message(response.body)))
    try:
        data = json.loads(response.body)
    except ValueError:  # a 200 whose body is not JSON
        raise AttemptFailed("malformed response", retry=True) from None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise AttemptFailed("malformed response", retry=True)
    return data


def server_message(body: bytes) -> str:
    """The server's own words from an error body: OpenAI's {"error": {"message": ...}}, vLLM's
    and FastAPI's {"message"/"detail": ...}, or the raw text."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            err = err.get("message") or err.get("detail") or err
        return err if isinstance(err, str) else json.dumps(err)
    return text


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


def first_token_top_logprobs(data: dict) -> dict[str, float]:
    """The first generated token's top logprobs (token text -> logprob) from a chat completion
    asked with `logprobs: true, top_logprobs: n`; {} when the response carries none."""
    try:
        entries = data["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        return {str(e["token"]): float(e["logprob"]) for e in entries}
    except (KeyError, IndexError, TypeError, ValueError):
        return {}


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
    """The connections of one event loop (one `Origin` per base URL) and its slot semaphore."""

    origins: list[Origin]
    sem: asyncio.Semaphore
    closer: AsyncGenerator[None, None] | None = None

    async def aclose(self) -> None:
        if self.closer is not None:
            await self.closer.aclose()
        else:
            await close_all(self.origins)


async def close_all(origins: list[Origin]) -> None:
    for origin in origins:
        await origin.aclose()
