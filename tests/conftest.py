"""Test-wide setup: an isolated Prefect home (set before Prefect is imported), the shared data."""

from __future__ import annotations

import atexit
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="sip-test-prefect-")
# Registered before Prefect is imported, so it runs after Prefect's own exit hooks stop its server.
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
C4 = DATA / "corpus" / "c4_sample" / "c4-sample.00000-of-00001.json.gz"
POLICY = "bundled:smollm2-135m-instruct"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert DATA.is_dir(), f"shared data not found at {DATA}"
    return DATA


@pytest.fixture(scope="session")
def tokenizer():
    from sip_core.infra.models import load_tokenizer

    return load_tokenizer(POLICY)


def c4_records(n: int) -> list[dict]:
    with gzip.open(C4, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for _, line in zip(range(n), fh)]


def write_jsonl_gz(path: Path, records: list, raw_lines: list[bytes] = ()) -> Path:
    """JSONL.gz with optional raw (possibly broken) lines appended, as a real corpus might have."""
    with gzip.open(path, "wb") as fh:
        for rec in records:
            fh.write(json.dumps(rec).encode() + b"\n")
        for raw in raw_lines:
            fh.write(raw + b"\n")
    return path


def pytest_unconfigure(config):
    # Prefect stops its temporary server at interpreter exit, after pytest closed the streams its
    # console handler writes to; that last INFO line is not worth a "Logging error" report.
    import logging

    logging.raiseExceptions = False
