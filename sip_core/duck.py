"""DuckDB connections shared by processes: one writer per file at a time, so others wait their turn.

Every use is short (open, write or read a batch, close), which keeps waits short; concurrent
processes retry with jittered backoff instead of failing on the file lock.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import duckdb


def connect(path: str | Path, attempts: int = 200) -> duckdb.DuckDBPyConnection:
    for attempt in range(attempts):
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(min(0.5, 0.02 * (attempt + 1)) * (0.5 + random.random()))
    raise AssertionError("unreachable")
