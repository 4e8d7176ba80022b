"""The `sip` command as a user runs it: a job whose model calls all fail ends in one line, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_rewrite_against_a_dead_endpoint_fails_in_one_line_and_commits_nothing(tmp_path):
    cmd = [sys.executable, "-m", "flows.cli", "rewrite", "--config", str(ROOT / "configs" / "smoke.yaml"),
           "--limit", "4", "--set", f"run.root={tmp_path}", "--set", "rewriter.backend=openai",
           "--set", "rewriter.base_url=http://127.0.0.1:9/v1", "--set", "rewriter.max_retries=0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("sip: error:")]
    assert errors == ["sip: error: rewrite: 4 of 4 model calls failed (first: connection error after 1 attempts (last: http://127.0.0.1:9/v1)); "
                      "nothing was committed and the items stay queued for the next run"]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list((tmp_path / "rewrites").rglob("_manifest.json"))
