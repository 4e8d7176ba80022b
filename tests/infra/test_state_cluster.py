"""Many writers on real parts: a real Postgres catalog, the moto S3 server for the Parquet data,
the fake OpenAI server, and 4 processes that each have their own empty local folder (4 machines).

They judge overlapping candidate sets through CachedLLM. One is killed with -9 mid-run and started
again from a fresh folder (a rescheduled pod). Then every candidate is stored exactly once, every
answer a finished worker got from the endpoint is stored, and a fifth fresh process makes 0 calls.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from postgres_server import PostgresServer, postgres_server  # noqa: F401  (fixture)
    from s3_server import S3Bucket, moto_server, s3  # noqa: F401  (fixtures)
except ImportError:  # tests/ imported as a package
    from tests.infra.postgres_server import PostgresServer, postgres_server  # noqa: F401
    from tests.s3_server import S3Bucket, moto_server, s3  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.postgres]

WORKER = Path(__file__).with_name("state_worker.py")
REPO = Path(__file__).resolve().parents[2]
SPAN, STEP, WORKERS, CHUNK = 60, 30, 4, 12  # worker w judges ids [w*STEP, w*STEP + SPAN): neighbours overlap


def _spec(tmp_path: Path, name: str, state: str, s3: S3Bucket, url: str, ids: list[int]) -> dict:
    return {"state": state, "root": s3.uri("run"), "storage_options": s3.storage_options,
            "state_dir": str(tmp_path / name / "state"), "base_url": url, "ids": ids, "chunk": CHUNK,
            "out": str(tmp_path / f"{name}.json")}


def _start(spec: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(WORKER), json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def _finish(proc: subprocess.Popen, spec: dict) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(Path(spec["out"]).read_text())


def _kill_mid_run(proc: subprocess.Popen, after_chunks: int) -> int:
    """SIGKILL once the worker has finished `after_chunks` chunks: the next one is in flight."""
    done = 0
    while done < after_chunks:
        line = proc.stdout.readline()
        assert line, f"worker ended before chunk {after_chunks}: {proc.stderr.read()[-3000:]}"
        done += line.startswith("chunk ")
    time.sleep(0.3)  # into the next chunk: requests in flight, a batch being written
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    return done


def test_four_machines_share_one_cache_exactly_once_and_a_fifth_calls_nothing(
        tmp_path, postgres_server: PostgresServer, s3: S3Bucket):
    from fake_openai import FakeOpenAI

    from sip_core.config import SipConfig
    from sip_core.infra.run_context import RunContext

    state = postgres_server.state_uri()
    every = sorted({i for w in range(WORKERS) for i in range(w * STEP, w * STEP + SPAN)})
    with FakeOpenAI(latency=0.05, responder=lambda messages: "Reasoning.\nFINAL DECISION: YES") as server:
        specs = [_spec(tmp_path, f"machine{w}", state, s3, server.base_url, list(range(w * STEP, w * STEP + SPAN)))
                 for w in range(WORKERS)]
        procs = [_start(spec) for spec in specs]
        _kill_mid_run(procs[0], after_chunks=2)
        assert procs[0].returncode == -signal.SIGKILL
        results = [_finish(p, spec) for p, spec in zip(procs[1:], specs[1:])]
        again = {**specs[0], "state_dir": str(tmp_path / "machine0-rescheduled" / "state")}
        results.append(_finish(_start(again), again))
        asked = server.requests

        ctx = RunContext(SipConfig.model_validate({"run": {
            "root": s3.uri("run"), "state": state, "state_dir": str(tmp_path / "check" / "state"),
            "storage_options": s3.storage_options}}))
        store = ctx.judgments_db
        rows = store.read("SELECT key, count(*) AS n FROM judgments GROUP BY key")
        assert len(rows) == len(every), "every candidate is stored"
        assert [r for r in rows if r["n"] > 1] == [], "and stored exactly once"
        stored = {r["key"] for r in rows}
        assert all(set(r["fresh"]) <= stored for r in results), "no answer a finished worker got is lost"
        assert asked >= len(every)

        fifth = _spec(tmp_path, "machine4", state, s3, server.base_url, every)
        rerun = _finish(_start(fifth), fifth)
        assert rerun["calls"] == 0 and rerun["hits"] == len(every)
        assert server.requests == asked, "the fifth machine made 0 endpoint calls"
    # the data is Parquet on the object store, the catalog in Postgres; nothing in the local folders
    assert any(key.endswith(".parquet") for key in s3.objects("run/_state/lake"))
    assert not list((tmp_path / "machine4" / "state").glob("*.duckdb"))
