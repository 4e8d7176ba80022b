"""Deployments for real: a local Prefect server and a process worker on 127.0.0.1, `prefect deploy
--all`, the nightly-rewrite schedule, and one triggered run of it that completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI, free_port
from test_llm_jobs import copy_rewriter

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "SIP_PROJECT_DIR": str(ROOT),
           "PREFECT_SERVER_API_HOST": "127.0.0.1"}
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
            time.sleep(1)
    yield env
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(60)


def prefect(env, *args, timeout=300):
    res = subprocess.run([PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"prefect {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def test_deploy_all_then_a_triggered_nightly_rewrite_completes(server, tmp_path):
    env = server
    prefect(env, "work-pool", "create", "sip-process", "--type", "process")
    prefect(env, "--no-prompt", "deploy", "--all")
    listed = prefect(env, "deployment", "ls")
    for name in ("prepare/prepare", "rewrite/nightly-rewrite", "thoughts/thoughts", "audit-judge/audit-judge"):
        assert name in listed
    inspected = prefect(env, "deployment", "inspect", "rewrite/nightly-rewrite")
    assert "0 2 * * *" in inspected and "'limit': 256" in inspected

    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "sip-process"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with FakeOpenAI(responder=copy_rewriter) as endpoint:
            params = {"params": {"config_file": "configs/smoke.yaml", "limit": 5, "overrides": [
                f"run.root={tmp_path}", "rewriter.backend=openai", f"rewriter.base_url={endpoint.base_url}",
                "rewriter.model=fake"]}}
            out = prefect(env, "deployment", "run", "rewrite/nightly-rewrite", "--params", json.dumps(params),
                          "--watch", "--watch-timeout", "400", timeout=450)
            assert endpoint.requests == 5
        assert "Completed" in out
        batches = list((tmp_path / "rewrites").glob("*/batch-*/_manifest.json"))
        assert len(batches) == 1 and json.loads(batches[0].read_text())["rows"] == 5
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
