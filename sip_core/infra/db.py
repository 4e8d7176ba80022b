"""DuckDB files: connections shared by processes, and the SQL they run (sql/ at the project root).

One writer per file at a time, so others wait their turn.

Every use is short (open, write or read a batch, close), which keeps waits short; concurrent
processes retry with jittered backoff instead of failing on the file lock.
"""

from __future__ import annotations

import functools
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


# SQL lives in sql/ at the project root; found whether installed editable or as a wheel.
_CANDIDATES = [Path(__file__).resolve().parents[2] / "sql", Path(__file__).resolve().parent / "sql"]


@functools.cache
def sql(name: str) -> str:
    for base in _CANDIDATES:
        path = base / f"{name}.sql"
        if path.is_file():
            return path.read_text()
    raise FileNotFoundError(f"SQL file {name}.sql not found in {', '.join(map(str, _CANDIDATES))}")
