"""The Prefect UI in a real headless Chromium: a local server started here, two deployments and a
completed run of `prepare` (through a process worker), then the deployments page and the flow-runs
page, as DOM text and as screenshots (kept under the test's tmp dir).

Needs the `chromium` binary (Debian: apt-get install chromium); skipped without it.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from test_deployments import PREFECT, ROOT, prefect, server  # noqa: F401  (server: the fixture)

pytestmark = pytest.mark.slow
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)


def chromium(url: str, *args: str, budget_ms: int) -> str:
    """One headless page load; the Prefect UI is a JS app, so let it run `budget_ms` of virtual time."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--no-first-run", "--run-all-compositor-stages-before-draw", "--window-size=1400,900",
           f"--virtual-time-budget={budget_ms}", *args, url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def page_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


def load(url: str, ready, shot: Path) -> str:
    """DOM text of `url` once `ready(text)` holds (longer virtual-time budgets if needed), and a
    screenshot of it."""
    for budget in (30_000, 60_000, 120_000):
        text = page_text(chromium(url, "--dump-dom", budget_ms=budget))
        if ready(text):
            break
    chromium(url, f"--screenshot={shot}", budget_ms=budget)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    return text


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)")
def test_ui_shows_the_deployments_and_a_completed_run(server, tmp_path):  # noqa: F811
    env = server
    prefect(env, "work-pool", "create", "sip-process", "--type", "process", "--overwrite")
    prefect(env, "--no-prompt", "deploy", "--name", "prepare", "--name", "nightly-rewrite")
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "sip-process"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        config = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
        config["run"]["root"] = str(tmp_path / "runs")
        out = prefect(env, "deployment", "run", "prepare/prepare", "--params", json.dumps({"config": config}),
                      "--watch", "--watch-timeout", "400", timeout=450)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    assert "Completed" in out
    run_name = re.search(r"Created flow run '([^']+)'", out).group(1)
    ui = env["PREFECT_API_URL"].removesuffix("/api")
    shots = tmp_path / "screenshots"
    shots.mkdir()

    text = load(f"{ui}/deployments", lambda t: "nightly-rewrite" in t and "prepare" in t, shots / "deployments.png")
    assert "2 Deployments" in text and "nightly-rewrite" in text and "prepare" in text
    assert "At 02:00 AM every day" in text  # the nightly schedule, as the UI words it

    # "Completed" is also a state-filter option on this page: look for it on the run's own row.
    def completed_row(t: str) -> bool:
        return run_name in t and "Completed" in t[t.index(run_name):]

    text = load(f"{ui}/runs", completed_row, shots / "flow-runs.png")
    assert completed_row(text), text[-2000:]
    row = text[text.index(run_name):]
    assert "prepare" in text[:text.index(run_name)] and "Deployment prepare" in row
    print(f"screenshots: {shots}")
