"""Fault injection against the fake OpenAI server, over the rewrite and thoughts jobs: endpoint
down, 401, a 429 storm, 500, malformed JSON, slow answers (past the timeout).

For each fault and job:
- a job whose every call failed commits nothing (CallsFailed, with the counts);
- a job where some items' calls failed commits them as failed rows only, never as data (no rewrite
  candidate, no kept thought row), and its stats count them;
- once the endpoint recovers, a rerun makes exactly the calls that failed before and no others
  (counted at the server).
The whole matrix is slow; one fault per job runs by default. The training side (a dead judge) is
tests/recipes/test_invalid_share.py; the command line's exit codes are tests/flows/test_cli.py; the
evaluation and judge-audit jobs over the same faults, and run.max_failed_share, are
tests/flows/test_faults_eval_audit.py.
"""

from __future__ import annotations

import pytest

from fake_openai import FakeOpenAI, free_port
from llm_job_fixtures import ROOT, blocks, chunks  # noqa: F401  (chunks: the fixture)
from sip_core.config import load_config
from sip_core.infra.run_context import RunContext
from sip_core.llm.factory import open_llm

FAULTS = ["down", "401", "429", "500", "malformed", "slow"]
FAST = {("rewrite", "500"), ("thoughts", "down")}
ROLE = {"rewrite": "rewriter", "thoughts": "teacher"}


def _params():
    return [pytest.param(job, fault, marks=() if (job, fault) in FAST else pytest.mark.slow)
            for job in ("rewrite", "thoughts") for fault in FAULTS]


def good_answer(messages) -> str:
    """A rewriter that copies; a teacher that inserts one thought mid-text (it passes the gate)."""
    found = blocks(messages)
    if "DOCUMENT" in found:
        text = found["DOCUMENT"]
        mid = text.index(" ", len(text) // 2)
        return text[:mid] + "<think>Next the author explains why.</think>" + text[mid:]
    return found["CONTINUATION X"]


def _cfg(root, job: str, url: str):
    role = ROLE[job]
    return load_config(ROOT / "configs" / "smoke.yaml", [
        f"run.root={root}", f"{role}.backend=openai", f"{role}.model=fake", f"{role}.base_url={url}",
        f"{role}.max_retries=1", f"{role}.backoff_s=0.01", f"{role}.backoff_max_s=0.02", f"{role}.timeout_s=5",
        "judge.parse_retries=0"])


def _run(job: str, root, url: str, manifest, limit: int):
    """The job's library call (what its Prefect task runs): (result, chunk ids it asked about)."""
    from sip_core.augment.rewrites import rewrite_next_batch
    from sip_core.augment.thought_insertion import insert_thoughts

    cfg = _cfg(root, job, url)
    llm = open_llm(cfg, ROLE[job])
    if job == "rewrite":
        return rewrite_next_batch(RunContext(cfg), manifest, llm, limit).manifest
    return insert_thoughts(RunContext(cfg), manifest, llm, limit=limit)


def _first_rows(manifest, n: int) -> list[dict]:
    from sip_core.training import data

    rows = data.read_rows(manifest, "train", {}, ["chunk_id", "suffix_text"])
    return rows.take(range(n))


def _usable(job: str, root, url: str, manifest) -> set[str]:
    """Chunk ids whose output a later stage would use."""
    from sip_core.augment.rewrites import rewrites_for

    env = RunContext(_cfg(root, job, url))
    if job == "rewrite":
        return set(rewrites_for(env, manifest)[0])
    from sip_core.augment.thought_insertion import insert_thoughts  # noqa: F401  (same artifact layout)
    from sip_core.training import data

    found = []
    for m in _thought_artifacts(root):
        found += data.gated_thoughts(m, None, {}).columns.get("chunk_id", [])
    return set(found)


def _thought_artifacts(root):
    from sip_core.infra import artifacts

    return [m for d in sorted((root / "prepare").glob("thoughts-*")) if (m := artifacts.load_committed(str(d), {}))]


@pytest.mark.parametrize("job, fault", _params())
def test_fault_commits_no_data_and_a_rerun_asks_exactly_the_failed_calls(chunks, tmp_path, job, fault):
    from sip_core.llm.cache import CallsFailed

    _, manifest = chunks
    rows = _first_rows(manifest, 4)
    broken = [r["suffix_text"][:40] for r in rows[:2]]  # the first two items fail, every time they are asked

    def fault_for(n, messages):
        return (fault if fault != "down" else "500") if any(b in " ".join(m["content"] for m in messages) for b in broken) else None

    # 1. every call fails: nothing is committed, the message counts them
    dead_url = f"http://127.0.0.1:{free_port()}/v1"
    with FakeOpenAI(faults=lambda n, m: fault if fault != "down" else None, slow_s=8, retry_after=0.01,
                    responder=good_answer) as srv:
        url = dead_url if fault == "down" else srv.base_url
        with pytest.raises(CallsFailed, match=rf"{job}: 2 of 2 model calls failed"):
            _run(job, tmp_path, url, manifest, 2)
    assert not list(tmp_path.rglob("rewrites/**/_manifest.json")) and not _thought_artifacts(tmp_path)

    # 2. some calls fail: they are recorded as failed, never data; the others are committed
    with FakeOpenAI(faults=fault_for, slow_s=8, retry_after=0.01, responder=good_answer) as srv:
        first = _run(job, tmp_path, srv.base_url, manifest, 4)
        assert srv.stats()["counts"].get("ok", 0) == 2  # the two healthy items, once each
        failed_ids = {r["chunk_id"] for r in rows[:2]}
        status = first.stats["status"] if job == "rewrite" else {"failed": first.stats["failed"]}
        assert status.get("error", status.get("failed")) == 2, first.stats
        assert failed_ids.isdisjoint(_usable(job, tmp_path, srv.base_url, manifest))

        # 3. the endpoint recovers: a rerun asks exactly the two failed items, nothing else
        srv.faults = None
        srv.reset()
        second = _run(job, tmp_path, srv.base_url, manifest, 2 if job == "rewrite" else 4)
        assert srv.stats()["requests"] == 2, srv.stats()
        assert failed_ids <= _usable(job, tmp_path, srv.base_url, manifest)
        if job == "thoughts":
            assert second.stats["failed"] == 0 and second.stats["rows"] == 4 and second.uri != first.uri
        srv.reset()  # and a third run asks nothing at all
        _run(job, tmp_path, srv.base_url, manifest, 4 if job == "thoughts" else 2)
        assert srv.stats()["requests"] == (0 if job == "thoughts" else 2)  # rewrite: the next two new chunks


def test_endpoint_errors_are_asked_again_with_backoff_but_client_errors_are_not(tmp_path):
    """CachedLLM.run_parsed: a 500 that outlives the backend's retries is asked once more (and then
    answered); a 401 is an answer about the request, never re-asked."""
    from sip_core.llm.cache import CachedLLM, JudgmentCache
    from sip_core.llm.prompting import load_prompt

    req = load_prompt("thoughts").render(None, text="A short document. It has two sentences.")
    for fault, requests, ok in (("500", 2, True), ("401", 1, False)):
        with FakeOpenAI(faults={0: fault}, responder=lambda m: "A short document. <think>t</think> It has.") as srv:
            cfg = _cfg(tmp_path, "rewrite", srv.base_url)
            cfg.rewriter.max_retries = 0
            llm = CachedLLM(open_llm(cfg, "rewriter").backend, JudgmentCache(tmp_path / f"{fault}.duckdb"))
            out = llm.run_parsed([req], parse_retries=0, error_backoff_s=0.01)
            assert srv.stats()["requests"] == requests, (fault, srv.stats())
        assert out[0].status == ("ok" if ok else "error"), out[0]
