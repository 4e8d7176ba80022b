"""The lifecycle flow end to end on the smoke preset: both lineages and the control trained,
every arm evaluated, one report; a rerun reuses every stage and makes no model call; the HTML
report opens in headless Chromium with its tables and plots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from flows.lifecycle import lifecycle
    from sip_core.config import LifecycleParams

    root = tmp_path_factory.mktemp("lifecycle")
    params = LifecycleParams(preset="smoke", overrides=[f"run.root={root}"])
    first = lifecycle(params)
    second = lifecycle(params)
    return root, first, second


def test_first_run_trains_every_arm_and_writes_the_report(runs):
    root, first, _ = runs
    assert first["judge_calls"] > 0 and first["calls"]["training"] > 0
    assert first["reused_stages"] == 0 and first["cached_evals"] == 0
    html = Path(first["report"].html)
    md = Path(first["report"].markdown).read_text()
    assert html.is_file()
    for arm in ("base→SFT→RLMT", "base→SIP→SFT→RLMT", "base→NTP"):
        assert arm in md
    results = json.loads((html.parent / "results.json").read_text())
    arms = {a["name"]: a for a in results["arms"]}
    # every arm evaluated, and the SIP arm's lineage reaches the chunk data and the base model
    for name in ("base", "base→SFT→RLMT", "base→SIP→SFT→RLMT", "base→NTP"):
        assert {"heldout_nll", "truthfulqa", "gsm8k", "reward_gate"} <= set(arms[name]["evaluations"])
    kinds = {row["kind"] for stage in arms["base→SIP→SFT→RLMT"]["stages"] for row in stage["lineage"]}
    assert {"checkpoint", "parquet-dataset", "source"} <= kinds
    assert [s["recipe"] for s in arms["base→SIP→SFT→RLMT"]["stages"]] == ["pretrain-dpo", "sft", "rlmt"]
    assert results["comparisons"] and results["judge_audit"]["judge"].startswith("proxy:")


def test_rerun_reuses_every_stage_and_calls_no_model(runs):
    _, first, second = runs
    assert second["judge_calls"] == 0, second["calls"]
    assert second["reused_stages"] == 6 and second["cached_evals"] == 5
    assert second["finals"] == first["finals"]
    # same numbers in the new report (only the call counts differ: the rerun made none)
    a, b = (json.loads((Path(r["report"].html).parent / "results.json").read_text()) for r in (first, second))
    assert [arm["evaluations"]["heldout_nll"]["nll"] for arm in a["arms"]] == \
        [arm["evaluations"]["heldout_nll"]["nll"] for arm in b["arms"]]
    assert [c["result"].get("win_rate") for c in a["comparisons"]] == [c["result"].get("win_rate") for c in b["comparisons"]]
    assert all(c["result"].get("calls", 0) == 0 for c in b["comparisons"])


def test_report_opens_in_headless_chromium(runs, tmp_path):
    binary = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
    if binary is None:
        pytest.skip("no chromium binary (Debian: apt-get install -y chromium; `make test` installs it)")
    html = Path(runs[1]["report"].html)
    shot = tmp_path / "report.png"
    flags = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,3000"]
    subprocess.run([*flags, f"--screenshot={shot}", html.as_uri()], check=True, capture_output=True, timeout=120)
    dom = subprocess.run([*flags, "--dump-dom", html.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(re.findall(r"<table", dom)) >= 5
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', dom)) >= 3
    assert "base→SIP→SFT→RLMT" in dom and "Lineage" in dom


def test_report_compare_puts_the_two_smoke_runs_side_by_side(runs, capsys):
    """`sip report compare` on two real smoke lifecycle reports (the first run and its rerun): every
    arm's headline rows appear with both runs as columns, and two runs with the same numbers have
    no difference marked."""
    from flows.cli import main

    _, first, second = runs
    a, b = (str(Path(r["report"].html).parent) for r in (first, second))
    assert a != b
    capsys.readouterr()
    assert main(["report", "compare", a, b]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Runs compared:")
    for arm in ("base→SFT→RLMT", "base→SIP→SFT→RLMT", "base→NTP"):
        block = md.split(f"## {arm}\n")[1].split("\n## ")[0]
        assert "| metric | A · " in block and " | B · " in block
        assert re.search(r"^\| held-out NLL", block, re.M), block
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert table_rows and not any("**> " in row or "**< " in row for row in table_rows)
