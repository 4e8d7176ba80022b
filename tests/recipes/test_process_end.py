"""A recipe process ends through `_cli.end_process`: its status is the recipe's, and nothing it printed
or logged is lost although interpreter teardown (where Arrow's pools can abort the process) is skipped."""

from __future__ import annotations

import subprocess
import sys

from recipe_fixtures import ROOT, env_vars

SCRIPT = """
import logging, sys
from sip_core.recipes._cli import end_process
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
print("stdout line", end="")
logging.getLogger("recipe").info("logged line")
sys.stderr.write("stderr line")
end_process(3)
print("never printed")
"""


def test_end_process_keeps_the_status_and_everything_buffered():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env={**env_vars(), "PYTHONUNBUFFERED": ""},
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 3
    assert proc.stdout == "stdout line"  # block-buffered on a pipe: lost without the flush
    assert "logged line" in proc.stderr and proc.stderr.endswith("stderr line")
