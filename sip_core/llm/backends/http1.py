"""A lean HTTP/1.1 client for JSON POSTs: keep-alive connections to one origin, nothing else.

Why not the openai SDK (httpx or aiohttp underneath): measured with cProfile against the fake
server at C = 128 (`benchmarks/bench_llm_jobs.py`), the SDK spent most of the client's 1.2-2.8 ms
of CPU per request building and validating request objects (httpx URL parsing and header models,
a deepcopy of the options, pydantic model construction, aiohttp header preparation); above ~150
requests/s the client, not the server, set the pace. A chat completion needs one request line,
five headers and a JSON body; this writes those bytes and reads the status line, headers and a
Content-Length or chunked body back (~0.2 ms of CPU per request).

What it does not do: redirects, proxies (HTTP(S)_PROXY is not read), HTTP/2, compression
(no Accept-Encoding is sent, so servers answer uncompressed). Timeouts are the caller's
(`asyncio.timeout` around `post`): a cancelled request closes its connection.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 64 * 1024


class ConnectionFailed(Exception):
    """The request did not get a complete response: refused, reset, closed early, or garbled."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class Origin:
    """Keep-alive connections to one base URL's host, reused LIFO; `post(path, body)` sends to
    the base URL's path + `path`. `header_lines` (e.g. the Authorization header) go on every
    request and are never shown by `repr`."""

    def __init__(self, base_url: str, header_lines: dict[str, str]) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {parts.scheme}://{parts.hostname or ''}")
        self.host, self.tls = parts.hostname, parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        self.query = f"?{parts.query}" if parts.query else ""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        default_port = self.port == (443 if self.tls else 80)
        fixed = {"Host": host if default_port else f"{host}:{self.port}", "Accept": "application/json",
                 "Content-Type": "application/json", "User-Agent": "sip", **header_lines}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._ssl = ssl.create_default_context() if self.tls else None

    def __repr__(self) -> str:
        return f"Origin({'https' if self.tls else 'http'}://{self.host}:{self.port}{self.prefix})"

    async def post(self, path: str, body: bytes) -> Response:
        """One POST. A reused keep-alive connection the server closed meanwhile fails before any
        response byte: that one is retried once on a fresh connection (nothing was processed)."""
        head = (f"POST {self.prefix}{path}{self.query} HTTP/1.1\r\n{self._fixed}"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
        while self._idle:
            conn = self._idle.pop()
            if conn[1].is_closing() or conn[0].at_eof():
                conn[1].close()
                continue
            try:
                return await self._exchange(conn, head, body)
            except _StaleConnection:
                continue
        return await self._exchange(await self._open(), head, body, fresh=True)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_connection(self.host, self.port, ssl=self._ssl, limit=MAX_HEADER_BYTES)
        except OSError as exc:
            raise ConnectionFailed(f"connect failed: {exc.strerror or type(exc).__name__}") from None

    async def _exchange(self, conn, head: bytes, body: bytes, fresh: bool = False) -> Response:
        reader, writer = conn
        keep = False
        try:
            writer.write(head + body)
            try:
                status_line = await reader.readuntil(b"\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                if not fresh and not getattr(exc, "partial", b""):
                    raise _StaleConnection from None
                raise
            response, keep = await _read_response(reader, status_line)
            return response
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError) as exc:
            raise ConnectionFailed(f"connection lost: {type(exc).__name__}") from None
        finally:  # also on cancellation (the caller's timeout): a half-read connection is never reused
            if keep:
                self._idle.append(conn)
            else:
                writer.close()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
        for _, writer in idle:
            try:
                await writer.wait_closed()
            except (OSError, ConnectionError):
                pass


class _StaleConnection(Exception):
    pass


async def _read_response(reader: asyncio.StreamReader, status_line: bytes) -> tuple[Response, bool]:
    """(response, whether the connection may be reused) after the status line was read."""
    try:
        version, code = status_line.split(b" ", 2)[:2]
        status = int(code)
    except ValueError:
        raise ConnectionFailed("not an HTTP response") from None
    raw = await reader.readuntil(b"\r\n\r\n")
    headers = {}
    for line in raw[:-4].decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    keep = version == b"HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:  # no length: the body runs to the end of the connection
        body, keep = await reader.read(), False
    return Response(status, headers, body), keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
