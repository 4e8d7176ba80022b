"""The rewrite job against a real local OpenAI-compatible endpoint: incremental batches, faults,
kill -9 mid-batch, and the API key kept out of every output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from fake_openai import FakeOpenAI
from llm_job_fixtures import ROOT, chunks, copy_rewriter, smoke_config  # noqa: F401  (chunks: the fixture)
from sip_core.infra.run_context import RunContext
from sip_core.llm.factory import open_llm


def _rewrite(root, url, chunks_manifest, limit, *extra):
    from sip_core.augment.rewrites import rewrite_next_batch

    cfg = smoke_config(root, url, *extra)
    llm = open_llm(cfg, "rewriter")
    return rewrite_next_batch(RunContext(cfg), chunks_manifest, llm, limit), llm


def test_rewrite_batches_are_incremental_and_reruns_call_nothing(chunks, tmp_path):
    root, manifest = chunks
    train = manifest.stats["chunks"]["train"]
    with FakeOpenAI(latency=0.01, responder=copy_rewriter) as srv:
        first, _ = _rewrite(root, srv.base_url, manifest, 40)
        assert first.manifest.rows == 40 and first.remaining == train - 40
        rows = pl.read_parquet(first.manifest.files)
        assert rows["status"].unique().to_list() == ["ok"]
        assert rows["token_overlap"].min() > 0.9  # copies come back as near-copies after re-tokenising
        second, _ = _rewrite(root, srv.base_url, manifest, 1000)
        assert second.manifest.rows == train - 40 and second.remaining == 0
        calls = srv.requests
        assert calls == train
        third, llm = _rewrite(root, srv.base_url, manifest, 1000)
        assert third.manifest is None and srv.requests == calls and llm.calls == 0
        # the same batch again (its output lost) is answered from the judgment cache alone
        import shutil

        shutil.rmtree(first.manifest.uri)
        again, llm = _rewrite(root, srv.base_url, manifest, 40)
        assert again.manifest.rows == 40 and llm.calls == 0 and srv.requests == calls


def test_faulty_endpoint_every_item_has_a_result_or_a_recorded_error(chunks, tmp_path):
    root, manifest = chunks
    faults = {1: "500", 2: "429", 3: "timeout", 4: "garbage", 5: "503", 6: "slow", 9: "disconnect",
              11: "400", 13: "malformed"}
    with FakeOpenAI(latency=0.01, responder=copy_rewriter, faults=faults, hang_s=5, slow_s=0.3,
                    retry_after=0.01) as srv:
        batch, llm = _rewrite(tmp_path, srv.base_url, manifest, 24)
    rows = pl.read_parquet(batch.manifest.files)
    assert rows.height == 24 and rows["chunk_id"].n_unique() == 24
    status = dict(zip(*rows["status"].value_counts().to_dict(as_series=False).values()))
    assert status.get("ok", 0) >= 21 and sum(status.values()) == 24
    assert llm.backend.stats["retries"] >= 6
    errors = rows.filter(pl.col("status") == "error")
    assert all(e and "400" in e for e in errors["error"].to_list())  # 400 is not retried, and says so


def test_failed_rewrites_are_not_done_and_a_rerun_asks_exactly_them(chunks, tmp_path):
    from sip_core.llm.cache import CallsFailed

    root, manifest = chunks
    # a dead endpoint: every call fails, nothing is committed, and the chunks stay queued
    with pytest.raises(CallsFailed, match=r"rewrite: 4 of 4 model calls failed"):
        _rewrite(tmp_path, "http://127.0.0.1:9/v1", manifest, 4, "rewriter.max_retries=0")
    assert not list((tmp_path / "rewrites").rglob("_manifest.json"))
    # two calls fail for good (HTTP 400 is not retried): the batch keeps them as errors, not as done
    with FakeOpenAI(latency=0.0, responder=copy_rewriter, faults={1: "400", 4: "400"}) as srv:
        first, _ = _rewrite(tmp_path, srv.base_url, manifest, 8)
    rows = pl.read_parquet(first.manifest.files)
    failed = set(rows.filter(pl.col("status") == "error")["chunk_id"].to_list())
    assert len(failed) == 2 and first.remaining == manifest.stats["chunks"]["train"] - 8
    # the endpoint is healthy again: the next run asks for exactly the failed chunks
    with FakeOpenAI(latency=0.0, responder=copy_rewriter) as srv:
        again, llm = _rewrite(tmp_path, srv.base_url, manifest, 2)
        assert srv.requests == 2 and llm.calls == 2
    retried = pl.read_parquet(again.manifest.files)
    assert set(retried["chunk_id"].to_list()) == failed and retried["status"].unique().to_list() == ["ok"]
    assert again.done_before == 6


def _killable_rewrite(root, url, manifest_uri) -> subprocess.Popen:
    code = (f"from tests.augment.test_llm_jobs import _rewrite; from sip_core.infra.artifacts import load_manifest; "
            f"_rewrite({str(root)!r}, {url!r}, load_manifest({manifest_uri!r}), 1000, 'rewriter.concurrency=2')")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_kill_9_mid_batch_then_rerun_has_no_duplicates_and_no_gaps(chunks, tmp_path):
    root, manifest = chunks
    train = manifest.stats["chunks"]["train"]
    from sip_core.llm.cache import JudgmentCache

    cache = JudgmentCache(RunContext(smoke_config(tmp_path)).judgments_db)
    with FakeOpenAI(latency=0.15, responder=copy_rewriter) as srv:
        proc = _killable_rewrite(tmp_path, srv.base_url, manifest.uri)
        deadline = time.time() + 120
        while cache.count() < 10 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stored = cache.count()
        assert 10 <= stored < train, "kill should land mid-batch"
        before = srv.requests
        batch, llm = _rewrite(tmp_path, srv.base_url, manifest, 1000)
    rows = pl.read_parquet(batch.manifest.files)
    assert rows.height == train and rows["chunk_id"].n_unique() == train
    assert llm.calls == train - stored and srv.requests - before == train - stored


def test_secrets_never_reach_logs_parquet_duckdb_or_manifests(chunks, tmp_path, monkeypatch):
    from flows.llm_jobs import rewrite
    from sip_core.config import RewriteParams

    secret = "sk-test-DO-NOT-LEAK-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    with FakeOpenAI(latency=0.0, responder=copy_rewriter, faults={0: "401", 1: "500"},
                    echo_auth_in_errors=True) as srv:
        params = RewriteParams(config_file=str(ROOT / "configs" / "smoke.yaml"), limit=8, overrides=[
            f"run.root={tmp_path}", f"rewriter.base_url={srv.base_url}", "rewriter.backend=openai",
            "rewriter.model=fake", "rewriter.backoff_s=0.01"])
        rewrite(params)
        assert any(secret in h for h in srv.auth_headers)  # the key was used...
    leaks = [p for base in (tmp_path, Path(os.environ["PREFECT_HOME"])) for p in base.rglob("*")
             if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaks == []  # ...and written nowhere: not in Parquet, DuckDB, manifests or Prefect's logs
