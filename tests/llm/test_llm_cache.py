"""The judgment cache and the cached runner: no repeated calls, parse retries, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence

from sip_core.llm.cache import CachedLLM, JudgmentCache
from sip_core.llm.prompting import load_prompt
from sip_core.llm.types import LLMBackend, LLMRequest, LLMResult


class ScriptedBackend(LLMBackend):
    """Answers from a function of the request; counts what it was asked."""

    kind = "scripted"

    def __init__(self, answer, model_id="scripted:1"):
        self.answer, self.model_id, self.asked = answer, model_id, []

    async def agenerate(self, requests: Sequence[LLMRequest], progress=None, on_result=None):
        out = []
        for i, req in enumerate(requests):
            self.asked.append(req)
            text = self.answer(req)
            res = LLMResult(text=None, error=text[6:]) if text.startswith("ERROR:") else LLMResult(text=text)
            out.append(res)
            if on_result:
                on_result(i, res)
        return out


def _safety_requests(n, seed=0):
    prompt = load_prompt("safety")
    return [prompt.render({"seed": seed}, text=f"document number {i}") for i in range(n)]


def test_a_rerun_repeats_no_call_and_returns_the_same_answers(tmp_path):
    cache = JudgmentCache(tmp_path / "j.duckdb")
    backend = ScriptedBackend(lambda r: "Looks fine.\nFINAL DECISION: YES")
    first = CachedLLM(backend, cache).run(_safety_requests(10))
    assert len(backend.asked) == 10 and all(j.ok and j.value is True for j in first)
    again_llm = CachedLLM(backend, cache)
    again = again_llm.run(_safety_requests(10) + _safety_requests(2))  # duplicates inside one batch too
    assert len(backend.asked) == 10 and again_llm.hits == 12 and again_llm.calls == 0
    assert [j.key for j in again[:10]] == [j.key for j in first] and all(j.cached for j in again)
    stats = {r["prompt"]: r for r in cache.stats()}["safety@1"]
    assert stats["stored"] == 10 and stats["hits"] == 12 and stats["misses"] == 10


def test_other_model_seed_or_prompt_version_is_another_key():
    req = _safety_requests(1)[0]
    other_seed = _safety_requests(1, seed=1)[0]
    assert req.cache_key("m1") != req.cache_key("m2")
    assert req.cache_key("m1") != other_seed.cache_key("m1")
    bumped = LLMRequest(req.messages, req.sampling, "safety@2", req.inputs)
    assert req.cache_key("m1") != bumped.cache_key("m1")


def test_unparseable_answers_are_stored_and_reasked_with_a_new_seed(tmp_path):
    cache = JudgmentCache(tmp_path / "j.duckdb")
    backend = ScriptedBackend(lambda r: "I cannot decide." if r.sampling.seed == 0 else "FINAL DECISION: NO")
    out = CachedLLM(backend, cache).run_parsed(_safety_requests(3), parse_retries=2)
    assert all(j.ok and j.value is False and j.seed != 0 for j in out)
    stats = {r["prompt"]: r for r in cache.stats()}["safety@1"]
    assert stats["parse_failures"] == 3 and stats["ok"] == 3
    never = ScriptedBackend(lambda r: "maybe?", model_id="scripted:never")
    out = CachedLLM(never, cache).run_parsed(_safety_requests(2), parse_retries=2)
    assert [j.status for j in out] == ["unparseable", "unparseable"] and len(never.asked) == 6
    assert all(j.value is None for j in out)  # never silently scored


def test_final_errors_are_recorded_and_asked_again_on_rerun(tmp_path):
    cache = JudgmentCache(tmp_path / "j.duckdb")
    flaky = ScriptedBackend(lambda r: "ERROR:HTTP 500 after 6 attempts")
    out = CachedLLM(flaky, cache).run(_safety_requests(2))
    assert [j.status for j in out] == ["error", "error"] and "HTTP 500" in out[0].error
    healthy = ScriptedBackend(lambda r: "FINAL DECISION: YES")
    out = CachedLLM(healthy, cache).run(_safety_requests(2))
    assert len(healthy.asked) == 2 and all(j.ok for j in out)


def _writer(path, worker):
    backend = ScriptedBackend(lambda r: "FINAL DECISION: YES", model_id=f"scripted:{worker}")
    llm = CachedLLM(backend, JudgmentCache(path), flush_rows=3)
    for round_ in range(5):
        llm.run(_safety_requests(12, seed=round_))


def test_two_processes_share_the_cache_without_lock_errors_or_lost_rows(tmp_path):
    path = tmp_path / "j.duckdb"
    JudgmentCache(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w)) for w in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]
    assert JudgmentCache(path).count() == 2 * 5 * 12


def test_config_sampling_overrides_are_part_of_the_key(tmp_path):
    cache = JudgmentCache(tmp_path / "j.duckdb")
    backend = ScriptedBackend(lambda r: f"FINAL DECISION: {'YES' if r.sampling.temperature < 0.5 else 'NO'}")
    cold = CachedLLM(backend, cache, sampling_overrides={"temperature": 0.0}).run(_safety_requests(1))
    hot = CachedLLM(backend, cache, sampling_overrides={"temperature": 1.0}).run(_safety_requests(1))
    assert len(backend.asked) == 2 and cold[0].value is True and hot[0].value is False
    assert backend.asked[0].sampling.temperature == 0.0
