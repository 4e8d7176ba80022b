"""Lineage database (DuckDB): every manifest, and the walk from any artifact back to its sources."""

from __future__ import annotations

import json
from pathlib import Path

from sip_core.infra.artifacts import Manifest
from sip_core.infra.db import connect as _connect, sql


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
