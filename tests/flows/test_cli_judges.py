"""`sip` with a probs judge behind an endpoint that returns no logprobs: one line, exit 2, before
any training (the audit's preflight)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_probs_verdicts_from_an_endpoint_without_logprobs_exit_2(tmp_path):
    from fake_openai import FakeOpenAI

    with FakeOpenAI(responder=lambda messages: "Conclusion: Option 1") as srv:  # text, never logprobs
        url = srv.base_url
        cmd = [sys.executable, "-m", "flows.cli", "audit-judge", "--config", str(ROOT / "configs" / "smoke.yaml"),
               "--set", f"run.root={tmp_path / 'run'}", "--set", "judge.backend=openai", "--set", "judge.model=fake",
               "--set", f"judge.base_url={srv.base_url}", "--set", "judge.verdict=probs"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("sip: error:")]
    assert errors == [f"sip: error: judge fake at {url} cannot give verdict=probs for quality: "
                      "the endpoint returned no logprobs"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert srv.requests == 1  # the one preflight request: nothing was judged


@pytest.mark.parametrize("command, role", [("pretrain", "judge"), ("rlmt", "judge"), ("evaluate", "eval_judge")])
def test_training_and_evaluation_refuse_that_judge_before_they_start(tmp_path, capsys, command, role):
    """With the gate off no audit would ever ask the endpoint: the command's own preflight does,
    once per probs task, and nothing under run.root is trained or judged."""
    from fake_openai import FakeOpenAI

    from flows.cli import main

    with FakeOpenAI(responder=lambda messages: "Conclusion: Option 1") as srv:
        args = [command, "--config", str(ROOT / "configs" / "smoke.yaml"), "--set", f"run.root={tmp_path / 'run'}",
                "--set", "judge.gate=off", "--set", f"{role}.backend=openai", "--set", f"{role}.model=fake",
                "--set", f"{role}.base_url={srv.base_url}", "--set", f"{role}.verdict=probs"]
        code = main(args + (["--model", "bundled:smollm2-135m-instruct"] if command == "evaluate" else []))
        # in-process, a log handler an earlier test bound to its own (closed) capture may add noise
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sip: error:")]
        assert code == 2 and errors == [f"sip: error: judge fake at {srv.base_url} cannot give verdict=probs "
                                        "for quality: the endpoint returned no logprobs"]
        assert srv.requests == 1
    assert not (tmp_path / "run" / "train").exists() and not (tmp_path / "run" / "prepare").exists()
