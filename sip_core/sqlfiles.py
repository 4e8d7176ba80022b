"""SQL lives in sql/ at the project root; this finds it whether installed editable or as a wheel."""

from __future__ import annotations

import functools
from pathlib import Path

_CANDIDATES = [Path(__file__).resolve().parent.parent / "sql", Path(__file__).resolve().parent / "sql"]


@functools.cache
def sql(name: str) -> str:
    for base in _CANDIDATES:
        path = base / f"{name}.sql"
        if path.is_file():
            return path.read_text()
    raise FileNotFoundError(f"SQL file {name}.sql not found in {', '.join(map(str, _CANDIDATES))}")
