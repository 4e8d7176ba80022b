"""Lineage database (DuckDB): every manifest, and the walk from any artifact back to its sources."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import duckdb

from sip_core.artifacts import Manifest
from sip_core.sqlfiles import sql


def _connect(path: Path, attempts: int = 50) -> duckdb.DuckDBPyConnection:
    """DuckDB allows one writing process per file; another process waits its turn (short writes)."""
    for attempt in range(attempts):
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.05 + random.random() * 0.1 * (attempt + 1))
    raise AssertionError("unreachable")


class LineageDB:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _connect(self.path) as con:
            con.execute(sql("lineage"))

    def record(self, manifests: list[Manifest]) -> None:
        rows = [(m.artifact_id, m.uri, m.kind, m.content_hash, m.rows, m.config_hash, m.code_version,
                 m.flow_run_id, m.task_run_id, m.part_of, m.created_at, m.model_dump_json()) for m in manifests]
        edges = [(m.artifact_id, p) for m in manifests for p in m.parents]
        with _connect(self.path) as con:
            con.executemany("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            if edges:
                con.executemany("INSERT OR IGNORE INTO artifact_parents VALUES (?, ?)", edges)

    def ancestry(self, uri: str) -> list[dict]:
        with _connect(self.path) as con:
            cur = con.execute(sql("lineage_ancestry"), {"uri": uri})
            names = [d[0] for d in cur.description]
            out = [dict(zip(names, row)) for row in cur.fetchall()]
        for row in out:
            row["manifest"] = json.loads(row.pop("manifest_json"))
        return out
