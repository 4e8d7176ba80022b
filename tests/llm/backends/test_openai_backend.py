"""OpenAIBackend against a real local OpenAI-compatible server (tests/fake_openai.py): ordering,
concurrency, round-robin, retries and their limits, odd answers, and the API key staying secret."""

from __future__ import annotations

import asyncio
import logging
import math
import time

import pytest

from sip_core.config import LLMConfig
from sip_core.llm.backends.openai import OpenAIBackend, parse_retry_after
from sip_core.llm.types import LLMRequest, Sampling

try:
    from fake_openai import GARBAGE, FakeOpenAI, free_port
except ImportError:  # tests/ imported as a package
    from tests.fake_openai import GARBAGE, FakeOpenAI, free_port

KEY = "sk-test-DO-NOT-LEAK-8f3a9c2e71"


def cfg(base_url, **kw) -> LLMConfig:
    base = {"backend": "openai", "model": "fake-model", "base_url": base_url, "concurrency": 8,
            "timeout_s": 5.0, "max_retries": 3, "backoff_s": 0.01, "backoff_max_s": 0.05}
    return LLMConfig(**(base | kw))


def reqs(n: int, tag: str = "q", **sampling) -> list[LLMRequest]:
    return [LLMRequest(messages=({"role": "user", "content": f"{tag}{i}"},), sampling=Sampling(**sampling))
            for i in range(n)]


def test_results_in_request_order_with_content_usage_and_progress():
    # the first two arrivals answer late, so completion order differs from request order
    with FakeOpenAI(latency=0.01, faults={0: "slow", 1: "slow"}, slow_s=0.3) as srv:
        backend = OpenAIBackend(cfg(srv.base_url), api_key=KEY)
        done: list[int] = []
        seen: dict[int, object] = {}
        results = backend.generate(reqs(40), progress=done.append, on_result=seen.__setitem__)
    assert [r.text for r in results] == [f"echo: q{i}" for i in range(40)]
    assert all(r.ok and r.attempts == 1 and r.error is None for r in results)
    assert sum(done) == 40 and len(done) == 40
    assert len(seen) == 40 and all(seen[i] is r for i, r in enumerate(results))
    assert all(r.prompt_tokens == 1 and r.completion_tokens == 2 for r in results)
    assert backend.stats == {"requests": 40, "retries": 0, "errors": 0, "prompt_tokens": 40,
                             "completion_tokens": 80}
    assert max(r.latency_s for r in results) >= 0.3
    assert backend.model_id == "openai:fake-model" and backend.kind == "openai"
    assert backend.generate([]) == []


@pytest.mark.parametrize("concurrency", [1, 5])
def test_concurrency_bound_is_respected_and_reached(concurrency):
    with FakeOpenAI(latency=0.05) as srv:
        backend = OpenAIBackend(cfg(srv.base_url, concurrency=concurrency))
        results = backend.generate(reqs(4 * concurrency + 3))
        assert all(r.ok for r in results)
        assert srv.max_in_flight == concurrency


def test_concurrency_bound_holds_across_concurrent_batches():
    with FakeOpenAI(latency=0.05) as srv:
        backend = OpenAIBackend(cfg(srv.base_url, concurrency=3))

        async def main():
            try:
                return await asyncio.gather(backend.agenerate(reqs(9, "a")), backend.agenerate(reqs(9, "b")))
            finally:
                await backend.aclose()

        a, b = asyncio.run(main())
        assert [r.text for r in a + b] == [f"echo: a{i}" for i in range(9)] + [f"echo: b{i}" for i in range(9)]
        assert srv.max_in_flight == 3


def test_round_robin_over_two_servers():
    with FakeOpenAI(latency=0.01) as one, FakeOpenAI(latency=0.01) as two:
        backend = OpenAIBackend(cfg([one.base_url, two.base_url]))
        results = backend.generate(reqs(30))
        assert all(r.ok for r in results)
        assert one.requests == 15 and two.requests == 15
    assert "base_urls=[" in repr(backend)


def test_retries_on_429_500_503_and_timeout_then_succeed():
    faults = {0: "429", 1: "500", 2: "503", 3: "timeout", 4: "502", 5: "malformed", 6: "disconnect"}
    with FakeOpenAI(latency=0.01, faults=faults, hang_s=5, retry_after=0) as srv:
        backend = OpenAIBackend(cfg(srv.base_url, timeout_s=0.4, concurrency=7))
        t0 = time.perf_counter()
        results = backend.generate(reqs(7))
        elapsed = time.perf_counter() - t0
        assert [r.text for r in results] == [f"echo: q{i}" for i in range(7)]
        assert sorted(r.attempts for r in results) == [2] * 7
        assert backend.stats["retries"] == 7 and backend.stats["errors"] == 0
        assert srv.counts == {"429": 1, "500": 1, "503": 1, "timeout": 1, "502": 1, "malformed": 1,
                              "disconnect": 1, "ok": 7}
    assert elapsed < 3  # the hung request was cut off at timeout_s, not at the server's 5 s


def test_retry_after_is_honoured_and_capped():
    with FakeOpenAI(faults={0: "429"}, retry_after=0.3) as srv:
        backend = OpenAIBackend(cfg(srv.base_url, backoff_s=0.0, backoff_max_s=1.0))
        [r] = backend.generate(reqs(1))
        assert r.ok and r.attempts == 2 and r.latency_s >= 0.3
    with FakeOpenAI(faults={0: "429"}, retry_after=120) as srv:
        backend = OpenAIBackend(cfg(srv.base_url, backoff_max_s=0.1))
        [r] = backend.generate(reqs(1))
        assert r.ok and r.attempts == 2 and r.latency_s < 2


def test_parse_retry_after():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None and parse_retry_after(None) is None


@pytest.mark.parametrize("status", ["400", "401", "403", "404", "422"])
def test_other_4xx_is_not_retried(status):
    with FakeOpenAI(faults={0: status}) as srv:
        backend = OpenAIBackend(cfg(srv.base_url), api_key=KEY)
        [r] = backend.generate(reqs(1))
        assert not r.ok and r.text is None and r.attempts == 1
        # the status, the URL and the server's own error.message, in one line
        assert r.error == f"HTTP {status} from {srv.base_url}: fake fault {status}"
        assert srv.requests == 1
        assert backend.stats["errors"] == 1 and backend.stats["retries"] == 0


def test_final_error_after_max_retries_and_the_batch_completes():
    def doomed(n, messages):
        return "500" if messages[-1]["content"] == "q3" else None

    with FakeOpenAI(latency=0.01, faults=doomed) as srv:
        backend = OpenAIBackend(cfg(srv.base_url, max_retries=2))
        results = backend.generate(reqs(8))
        assert [r.ok for r in results] == [True, True, True, False, True, True, True, True]
        assert results[3].error == f"HTTP 500 after 3 attempts (last: {srv.base_url}): fake fault 500"
        assert results[3].attempts == 3
        assert results[3].text is None
        assert srv.counts["500"] == 3
        assert backend.stats["errors"] == 1 and backend.stats["retries"] == 2 and backend.stats["requests"] == 8


def test_timeouts_disconnects_and_connection_refused_exhausted():
    with FakeOpenAI(faults=lambda n, m: "timeout", hang_s=5) as srv:
        backend = OpenAIBackend(cfg(srv.base_url, timeout_s=0.2, max_retries=1))
        [r] = backend.generate(reqs(1))
        assert r.error == f"timeout after 2 attempts (last: {srv.base_url})"
    with FakeOpenAI(faults=lambda n, m: "disconnect") as srv:
        [r] = OpenAIBackend(cfg(srv.base_url, max_retries=2)).generate(reqs(1))
        assert r.error == f"connection error after 3 attempts (last: {srv.base_url})" and srv.counts["disconnect"] == 3
    dead = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAIBackend(cfg(dead, max_retries=1))
    [r] = backend.generate(reqs(1))
    assert r.error == f"connection error after 2 attempts (last: {dead})" and r.attempts == 2


def test_a_dead_replica_is_retried_on_the_live_one():
    with FakeOpenAI() as live:
        backend = OpenAIBackend(cfg([f"http://127.0.0.1:{free_port()}/v1", live.base_url], max_retries=2))
        results = backend.generate(reqs(10))
        assert [r.text for r in results] == [f"echo: q{i}" for i in range(10)]
        assert backend.stats["retries"] >= 1 and live.requests == 10


def test_garbage_and_empty_content_are_returned_as_is():
    with FakeOpenAI(faults={0: "garbage", 1: "empty"}) as srv:
        backend = OpenAIBackend(cfg(srv.base_url, concurrency=1))
        results = backend.generate(reqs(3))
    assert [r.text for r in results] == [GARBAGE, "", "echo: q2"]
    assert all(r.ok for r in results)


def test_responder_decides_the_content():
    with FakeOpenAI(responder=lambda messages: messages[-1]["content"].upper()) as srv:
        results = OpenAIBackend(cfg(srv.base_url)).generate(reqs(3, "abc"))
    assert [r.text for r in results] == ["ABC0", "ABC1", "ABC2"]


def test_sampling_params_and_config_overrides():
    with FakeOpenAI(record_bodies=True) as srv:
        plain = OpenAIBackend(cfg(srv.base_url))
        plain.generate([LLMRequest(messages=({"role": "user", "content": "x"},))])
        sampled = LLMRequest(messages=({"role": "user", "content": "y"},),
                             sampling=Sampling(temperature=0.7, top_p=0.9, max_tokens=32, seed=5, stop=("\n", "END")))
        OpenAIBackend(cfg(srv.base_url)).generate([sampled])
        OpenAIBackend(cfg(srv.base_url, temperature=0.0, top_p=1.0, max_tokens=8)).generate([sampled])
        first, second, third = srv.bodies
    assert first["model"] == "fake-model" and first["messages"] == [{"role": "user", "content": "x"}]
    assert first["temperature"] == 1.0 and first["top_p"] == 1.0 and first["max_tokens"] == 256
    assert "seed" not in first and "stop" not in first
    assert (second["temperature"], second["top_p"], second["max_tokens"]) == (0.7, 0.9, 32)
    assert second["seed"] == 5 and second["stop"] == ["\n", "END"]
    assert (third["temperature"], third["top_p"], third["max_tokens"]) == (0.0, 1.0, 8)
    assert third["seed"] == 5


def test_api_key_is_sent_but_never_shown(caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx2", "httpcore2", "httpx", "httpcore", "aiohttp", "sip_core"):
        caplog.set_level(logging.DEBUG, logger=name)
    faults = {0: "401", 1: "400", 2: "500", 3: "500", 4: "500"}
    with FakeOpenAI(faults=faults, echo_auth_in_errors=True) as srv:
        backend = OpenAIBackend(cfg(srv.base_url, concurrency=1, max_retries=1), api_key=KEY)
        results = backend.generate(reqs(4))
        assert set(srv.auth_headers) == {f"Bearer {KEY}"}
        url = srv.base_url
    errors = [r.error for r in results if r.error]
    assert len(errors) == 3  # 401, 400, and one request whose two attempts both got 500
    assert any(e.startswith(f"HTTP 400 from {url}: ") and "***" in e for e in errors)  # the server echoed it, we scrubbed
    assert errors[0].startswith(f"HTTP 401 from {url}: fake fault 401 (you sent 'Bearer ***')")
    assert errors[-1].startswith(f"HTTP 500 after 2 attempts (last: {url}): fake fault 500")
    text = caplog.text + repr(backend) + str(backend) + repr(vars(backend)) + "".join(errors)
    assert "fake-model" in repr(backend)
    assert KEY not in text and KEY[8:] not in text
    assert caplog.records  # the check above did look at something


def test_api_key_from_env_then_empty(monkeypatch):
    monkeypatch.setenv("SIP_TEST_KEY", "env-key-123456")
    monkeypatch.delenv("SIP_TEST_NO_KEY", raising=False)
    with FakeOpenAI() as srv:
        OpenAIBackend(cfg(srv.base_url, api_key_env="SIP_TEST_KEY")).generate(reqs(1))
        OpenAIBackend(cfg(srv.base_url, api_key_env="SIP_TEST_NO_KEY")).generate(reqs(1))
        OpenAIBackend(cfg(srv.base_url, api_key_env="SIP_TEST_KEY"), api_key="explicit-1").generate(reqs(1))
        assert srv.auth_headers == ["Bearer env-key-123456", "Bearer EMPTY", "Bearer explicit-1"]


def test_async_use_from_a_running_loop_then_close():
    with FakeOpenAI(latency=0.01) as srv:
        backend = OpenAIBackend(cfg(srv.base_url))

        async def main():
            first = await backend.agenerate(reqs(3))
            again = backend.generate(reqs(2))  # sync call inside a running loop: its own thread+loop
            second = await backend.agenerate(reqs(3, "z"))
            return first, again, second

        first, again, second = asyncio.run(main())  # no aclose(): the loop's shutdown closed them
        assert not backend._states
        backend.close()  # nothing left: no error
        assert [r.text for r in first + again + second] == [
            "echo: q0", "echo: q1", "echo: q2", "echo: q0", "echo: q1", "echo: z0", "echo: z1", "echo: z2"]
        # generate() twice: a fresh loop each time, clients closed after each
        assert all(r.ok for r in backend.generate(reqs(2)) + backend.generate(reqs(2)))
        assert not backend._states


def test_empty_base_url_is_an_error():
    with pytest.raises(ValueError, match="base_url"):
        OpenAIBackend(cfg([]))


def test_random_faults_are_reproducible_and_all_retried():
    runs = []
    for _ in range(2):
        with FakeOpenAI(fault_rates={"500": 0.2, "429": 0.1}, seed=7, retry_after=0) as srv:
            backend = OpenAIBackend(cfg(srv.base_url, concurrency=1, max_retries=10))
            results = backend.generate(reqs(30))
            assert all(r.ok for r in results)
            assert backend.stats["retries"] == srv.counts["500"] + srv.counts["429"] > 0
            runs.append((dict(srv.counts), [r.attempts for r in results]))
    assert runs[0] == runs[1]


def test_fake_server_in_a_child_process():
    with FakeOpenAI(latency=0.01, faults={1: "503"}, process=True) as srv:
        results = OpenAIBackend(cfg(srv.base_url, concurrency=2)).generate(reqs(4))
        assert [r.text for r in results] == [f"echo: q{i}" for i in range(4)]
        stats = srv.stats()
        assert stats["requests"] == 5 and stats["counts"] == {"503": 1, "ok": 4} and stats["max_in_flight"] == 2


def test_keep_alive_connections_are_reused():
    """The lean HTTP/1.1 path keeps connections open between requests: two slots, two connections."""
    from sip_core.llm.types import run_sync

    with FakeOpenAI(latency=0.01) as srv:
        backend = OpenAIBackend(cfg(srv.base_url, concurrency=2, max_retries=0))

        async def batch():
            try:
                results = await backend.agenerate(reqs(6))
                return results, len((await backend._state()).origins[0]._idle)
            finally:
                await backend.aclose()

        results, idle = run_sync(batch())
    assert all(r.ok and r.attempts == 1 for r in results) and idle == 2


@pytest.mark.parametrize("pause_s", [0.0, 0.05])  # reused before or after the close is seen
def test_a_connection_the_server_closed_is_replaced_without_a_failed_attempt(pause_s):
    """A server that hangs up after every answer (keep-alive promised, then closed): each next
    request finds its pooled connection dead and goes out on a fresh one, attempt 1 still."""
    from sip_core.llm.backends.http1 import Origin

    body = b'{"ok":1}'
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def main():
        accepted = []

        async def serve(reader, writer):
            accepted.append(1)
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(reply)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        origin = Origin(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", {})
        try:
            out = []
            for _ in range(3):
                out.append(await origin.post("/chat/completions", b"{}"))
                await asyncio.sleep(pause_s)
            return out, len(accepted)
        finally:
            await origin.aclose()
            server.close()

    out, connections = asyncio.run(main())
    assert [r.body for r in out] == [body] * 3 and connections == 3


def test_http_response_framing_chunked_and_close_delimited():
    """Bodies framed by chunks (with a trailer) or by the server closing, from a raw socket server."""
    from sip_core.llm.backends.http1 import Origin

    replies = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=1\r\n:1}\r\n0\r\nT: v\r\n\r\n",
               b"HTTP/1.0 503 Busy\r\nRetry-After: 2\r\n\r\n{\"detail\": \"later\"}"]

    async def main():
        async def serve(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(replies.pop(0))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        origin = Origin(f"http://127.0.0.1:{port}/v1", {})
        try:
            return [await origin.post("/x", b"{}"), await origin.post("/x", b"{}")]
        finally:
            await origin.aclose()
            server.close()

    chunked, closed = asyncio.run(main())
    assert chunked.status == 200 and chunked.body == b'{"a":1}'
    assert closed.status == 503 and closed.headers["retry-after"] == "2" and closed.body == b'{"detail": "later"}'


def test_non_http_base_url_is_rejected_at_construction():
    with pytest.raises(ValueError, match="not an http"):
        OpenAIBackend(cfg("ftp://example.org/v1"))


def _choice_request() -> LLMRequest:
    return LLMRequest(messages=({"role": "user", "content": "Which is better, A or B?"},
                                {"role": "assistant", "content": "Better:"}),
                      sampling=Sampling(temperature=0.0, max_tokens=1), choices=(("A", " A"), ("B", " B")))


def test_probs_verdict_reads_the_first_tokens_top_logprobs():
    """judge.verdict=probs on an endpoint: logprobs asked for, the prefill continued, each choice's
    log-probability read from the first token's top_logprobs (a raw server stands in: the fake
    server has no logprobs)."""
    import json as _json

    from sip_core.llm.types import read_choice_logprobs

    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": " B"},
                           "logprobs": {"content": [{"token": " B", "logprob": -0.2, "top_logprobs": [
                               {"token": " B", "logprob": -0.2}, {"token": "B", "logprob": -3.0},
                               {"token": " A", "logprob": -1.8}, {"token": " maybe", "logprob": -5.0}]}]}}],
              "usage": {"prompt_tokens": 9, "completion_tokens": 1}}
    seen = []

    async def main():
        async def serve(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")).split(b":")[1])
            seen.append(_json.loads(await reader.readexactly(length)))
            body = _json.dumps(answer).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        backend = OpenAIBackend(cfg(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"))
        try:
            return await backend.agenerate([_choice_request()])
        finally:
            await backend.aclose()
            server.close()

    [r] = asyncio.run(main())
    body = seen[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["continue_final_message"] is True
    lp = read_choice_logprobs(r.text)
    assert r.ok and r.choice_logprobs == lp and lp["A"] == pytest.approx(-1.8)
    assert lp["B"] == pytest.approx(math.log(math.exp(-0.2) + math.exp(-3.0)), abs=1e-6)
    assert r.prompt_tokens == 9 and r.completion_tokens == 1


def test_probs_verdict_without_logprobs_is_an_error_not_a_vote():
    with FakeOpenAI() as srv:  # answers text only
        backend = OpenAIBackend(cfg(srv.base_url))
        [r] = backend.generate([_choice_request()])
    assert not r.ok and r.error == "the endpoint returned no logprobs" and backend.stats["errors"] == 1


def test_a_shared_prefix_is_answered_once_before_its_other_requests_are_sent():
    """Requests with one shared key (a candidate set's prompts): the first is sent alone and the
    rest only after its answer, so an endpoint's prefix cache holds their common opening; requests
    without a key, and the first of every key, go out together."""
    arrivals: list[tuple[float, str]] = []

    def record(n, messages):
        arrivals.append((time.monotonic(), messages[-1]["content"]))
        return None

    def req(text: str, key: str | None) -> LLMRequest:
        return LLMRequest(messages=({"role": "user", "content": text},), shared_keys=(key,) if key else ())

    requests = [req(f"{key} {i}", key) for i in range(4) for key in ("a", "b")] + [req("solo", None)]
    with FakeOpenAI(latency=0.3, faults=record) as srv:
        backend = OpenAIBackend(LLMConfig(backend="openai", model="fake", base_url=srv.base_url, concurrency=16))
        results = backend.generate(requests)
    assert [r.text for r in results] == [f"echo: {r.messages[-1]['content']}" for r in requests]
    start = arrivals[0][0]
    first = {text for t, text in arrivals if t - start < 0.15}
    assert first == {"a 0", "b 0", "solo"}, arrivals
    assert all(t - start >= 0.25 for t, text in arrivals if text not in first), arrivals
