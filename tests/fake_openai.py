"""A real OpenAI-compatible HTTP server on 127.0.0.1, for the openai backend's tests and benchmarks.

    with FakeOpenAI(latency=0.05, faults={0: "500", 3: "429"}) as srv:
        backend = OpenAIBackend(LLMConfig(backend="openai", model="fake", base_url=srv.base_url))
        ...
        srv.counts["500"], srv.max_in_flight, srv.auth_headers

aiohttp's web server (C-accelerated HTTP parser, already installed through s3fs) on its own event
loop in a background thread, listening on a free loopback port. Endpoints: `POST /v1/chat/completions`,
`GET /v1/models`, and `GET /_fake/stats` (the counters as JSON, for a server in another process).

Behaviour:
  latency      seconds every answer waits (asyncio.sleep, so C concurrent requests take ~L, not C*L)
  responder    `responder(messages) -> str | None` decides the content (None: `"content": null`);
               default: "echo: <last message content>"
  faults       by arrival number (0-based, counted over every chat request this server received):
               a mapping {n: kind}, a sequence (faults[n], None = normal), or a callable
               `(n, messages) -> kind | None`
  fault_rates  {kind: probability}, drawn per request from random.Random(seed) (used when `faults`
               gave no fault for that request)
Fault kinds: "timeout" (hang `hang_s`, or until the client goes away), "slow" (answer after `slow_s`),
"429" (with `Retry-After: retry_after`), any other 3-digit status ("500", "503", "400", ...: an
OpenAI-style JSON error body), "garbage" (a valid completion whose content is junk text),
"malformed" (status 200, a body that is not JSON), "empty" (content null), "disconnect" (the
connection is dropped without an answer).

Counters: `requests` (chat requests received), `counts` (outcome -> n: "ok" or the fault kind),
`max_in_flight`, `in_flight`, `auth_headers` (every Authorization value seen: for asserting the key
was sent; never printed, not in repr), `bodies` (the JSON bodies, when record_bodies=True).
`echo_auth_in_errors=True` puts the Authorization value into error messages, as real servers
sometimes do, to test that a client scrubs it.
`process=True` runs the server in a child process instead (a benchmark's client then has the
interpreter to itself): no responder, no callable faults there, and only `stats()` reads its
counters (the attributes are this process's, and stay zero).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

Messages = list[dict[str, Any]]
Responder = Callable[[Messages], "str | None"]
FaultSpec = Mapping[int, str] | Sequence["str | None"] | Callable[[int, Messages], "str | None"] | None

GARBAGE = "}{ \x00\ufffd<|endoftext|> ]]] null NaN \u202e lorem %%% \\u0000 {{{"


def echo(messages: Messages) -> str:
    last = messages[-1].get("content", "") if messages else ""
    return f"echo: {last}"


def _words(text: str) -> int:
    return len(str(text).split())


class FakeOpenAI:
    def __init__(self, latency: float = 0.0, *, responder: Responder | None = None, faults: FaultSpec = None,
                 fault_rates: Mapping[str, float] | None = None, seed: int = 0, hang_s: float = 30.0,
                 slow_s: float = 1.0, retry_after: float | str = 0.05, model: str = "fake-model",
                 record_bodies: bool = False, echo_auth_in_errors: bool = False, process: bool = False) -> None:
        self.latency = latency
        self.responder = responder or echo
        self.faults = faults
        self.fault_rates = dict(fault_rates or {})
        self.seed = seed
        self.hang_s = hang_s
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.model = model
        self.record_bodies = record_bodies
        self.echo_auth_in_errors = echo_auth_in_errors
        self.process = process
        self._lock = threading.Lock()
        self.reset()
        self.port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._proc: subprocess.Popen | None = None

    # -- counters ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Zero the counters (and restart the arrival numbering and the fault RNG)."""
        with self._lock:
            self.requests = 0
            self.counts: Counter[str] = Counter()
            self.in_flight = 0
            self.max_in_flight = 0
            self.auth_headers: list[str] = []
            self.bodies: list[dict] = []
            self._rng = random.Random(self.seed)

    def stats(self) -> dict[str, Any]:
        """requests, counts, max_in_flight, in_flight (no header values): read locally, or over HTTP
        from a server running in another process."""
        if self._proc is not None:
            with urllib.request.urlopen(f"{self.root_url}/_fake/stats", timeout=10) as resp:
                return json.loads(resp.read())
        with self._lock:
            return {"requests": self.requests, "counts": dict(self.counts), "max_in_flight": self.max_in_flight,
                    "in_flight": self.in_flight}

    def __repr__(self) -> str:  # no header values, ever
        return f"FakeOpenAI(port={self.port}, latency={self.latency}, requests={self.requests})"

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def root_url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeOpenAI is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    # -- behaviour ---------------------------------------------------------------------------------

    def _fault_for(self, n: int, messages: Messages) -> str | None:
        spec = self.faults
        kind: str | None = None
        if callable(spec):
            kind = spec(n, messages)
        elif isinstance(spec, Mapping):
            kind = spec.get(n)
        elif spec is not None and n < len(spec):
            kind = spec[n]
        if kind is None and self.fault_rates:
            draw = self._rng.random()
            acc = 0.0
            for k, p in self.fault_rates.items():
                acc += p
                if draw < acc:
                    kind = k
                    break
        return kind

    def _completion(self, messages: Messages, content: str | None, model: str) -> dict[str, Any]:
        prompt_tokens = sum(_words(m.get("content", "")) for m in messages)
        completion_tokens = _words(content) if content else 0
        return {
            "id": f"chatcmpl-fake-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    @staticmethod
    def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        return web.json_response(body, status=status, headers=headers)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._error(400, "body is not JSON")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not body.get("model"):
            return self._error(400, "model and messages are required")
        with self._lock:
            n = self.requests
            self.requests += 1
            self.auth_headers.append(auth)
            if self.record_bodies:
                self.bodies.append(body)
            kind = self._fault_for(n, messages)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        outcome = kind or "ok"
        try:
            if kind == "timeout":
                deadline = time.monotonic() + self.hang_s
                while time.monotonic() < deadline:
                    if request.transport is None or request.transport.is_closing():
                        break
                    await asyncio.sleep(0.02)
            elif kind == "slow":
                await asyncio.sleep(self.slow_s)
            elif self.latency > 0:
                await asyncio.sleep(self.latency)

            if kind is not None and kind.isdigit():
                status = int(kind)
                headers = {"Retry-After": str(self.retry_after)} if status == 429 else None
                message = f"fake fault {status}"
                if self.echo_auth_in_errors:  # as OpenAI's "Incorrect API key provided: sk-..." does
                    message += f" (you sent {auth!r})"
                return self._error(status, message, headers)
            if kind == "disconnect":  # hang up without an answer
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=204)
            if kind == "malformed":
                return web.Response(status=200, text="<html>upstream exploded{", content_type="application/json")
            if kind == "garbage":
                content: str | None = GARBAGE
            elif kind == "empty":
                content = None
            else:
                content = self.responder(messages)
            return web.json_response(self._completion(messages, content, str(body["model"])))
        finally:
            with self._lock:
                self.in_flight -= 1
                self.counts[outcome] += 1

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_fake/stats", self._stats)
        return app

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        if self.port is not None:
            return self
        if self.process:
            self._start_child()
            return self
        sock = _listening_socket()
        port = sock.getsockname()[1]
        started = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.5)
                loop.run_until_complete(self._runner.setup())
                loop.run_until_complete(web.SockSite(self._runner, sock, backlog=4096).start())
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                errors.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-openai", daemon=True)
        self._thread.start()
        started.wait(30)
        if errors:
            raise errors[0]
        self.port = port
        return self

    def _start_child(self) -> None:
        if self.responder is not echo or callable(self.faults):
            raise ValueError("FakeOpenAI(process=True) takes no responder and no callable faults")
        faults = dict(self.faults) if isinstance(self.faults, Mapping) else (
            None if self.faults is None else dict(enumerate(self.faults)))
        config = {"latency": self.latency, "faults": {str(k): v for k, v in (faults or {}).items() if v},
                  "fault_rates": self.fault_rates, "seed": self.seed, "hang_s": self.hang_s,
                  "slow_s": self.slow_s, "retry_after": self.retry_after, "model": self.model}
        # stdin stays open as a lifeline: the child exits when it reads EOF (this process is gone)
        self._proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), json.dumps(config)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not line.strip().isdigit():
            self._proc.kill()
            self._proc = None
            raise RuntimeError("FakeOpenAI child process did not start")
        self.port = int(line)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe:
                    pipe.close()
            self._proc = None
        if self._thread is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
        self.port = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve_forever(config: dict[str, Any]) -> None:
    """The child process of process=True: serve on a free port, print it, run until terminated."""
    config["faults"] = {int(k): v for k, v in config.get("faults", {}).items()}
    srv = FakeOpenAI(**config)

    def lifeline() -> None:
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=lifeline, daemon=True).start()

    async def main() -> None:
        sock = _listening_socket()
        runner = web.AppRunner(srv._app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.SockSite(runner, sock, backlog=4096).start()
        print(sock.getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    return sock


def free_port() -> int:
    """A loopback port nothing listens on (for connection-refused tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    _serve_forever(json.loads(sys.argv[1]))
