"""OpenAIBackend against a real local OpenAI-compatible server (tests/fake_openai.py): ordering,
concurrency, round-robin, retries and their limits, odd answers, and the API key staying secret."""

from __future__ import annotations

import asyncio
import logging
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


@pytest.mark.parametrize("status", ["400", "401", "404", "422"])
def test_other_4xx_is_not_retried(status):
    with FakeOpenAI(faults={0: status}) as srv:
        backend = OpenAIBackend(cfg(srv.base_url))
        [r] = backend.generate(reqs(1))
        assert not r.ok and r.text is None and r.attempts == 1
        assert r.error.startswith(f"HTTP {status}") and "\n" not in r.error
        assert srv.requests == 1
        assert backend.stats["errors"] == 1 and backend.stats["retries"] == 0


def test_final_error_after_max_retries_and_the_batch_completes():
    def doomed(n, messages):
        return "500" if messages[-1]["content"] == "q3" else None

    with FakeOpenAI(latency=0.01, faults=doomed) as srv:
        backend = OpenAIBackend(cfg(srv.base_url, max_retries=2))
        results = backend.generate(reqs(8))
        assert [r.ok for r in results] == [True, True, True, False, True, True, True, True]
        assert results[3].error == f"HTTP 500 after 3 attempts (last: {srv.base_url})" and results[3].attempts == 3
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
    assert errors[-1] == f"HTTP 500 after 2 attempts (last: {url})"
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
