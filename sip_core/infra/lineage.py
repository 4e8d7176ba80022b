"""Lineage: every manifest, and the walk from any artifact back to its sources.

It lives wherever `run.state` says (sip_core/infra/state.py), beside the judgment cache: a local
DuckDB file, or a DuckLake store that every machine of a cluster writes and `sip lineage` reads.
An artifact id names its content, so a manifest already recorded is never written again.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from sip_core.infra.artifacts import Manifest
from sip_core.infra.db import sql
from sip_core.infra.state import StateStore, as_store

ARTIFACTS = pa.schema([
    ("artifact_id", pa.string()), ("uri", pa.string()), ("kind", pa.string()), ("content_hash", pa.string()),
    ("n_rows", pa.int64()), ("config_hash", pa.string()), ("code_version", pa.string()),
    ("flow_run_id", pa.string()), ("task_run_id", pa.string()), ("part_of", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")), ("manifest_json", pa.string())])
PARENTS = pa.schema([("artifact_id", pa.string()), ("parent_id", pa.string())])


def insert_lineage(con: duckdb.DuckDBPyConnection, artifacts: pa.Table, parents: pa.Table) -> int:
    """Insert-if-absent of artifacts (by id) and parent edges (by pair), inside the caller's write turn."""
    con.register("sip_artifacts", artifacts.select(ARTIFACTS.names).cast(ARTIFACTS))
    con.register("sip_parents", parents.select(PARENTS.names).cast(PARENTS))
    try:
        added = con.execute(f"""INSERT INTO artifacts ({', '.join(ARTIFACTS.names)})
            SELECT {', '.join(ARTIFACTS.names)} FROM (SELECT * FROM sip_artifacts
                QUALIFY row_number() OVER (PARTITION BY artifact_id ORDER BY created_at DESC) = 1) b
            ANTI JOIN artifacts a ON a.artifact_id = b.artifact_id""").fetchone()[0]
        con.execute("""INSERT INTO artifact_parents (artifact_id, parent_id)
            SELECT * FROM (SELECT DISTINCT artifact_id, parent_id FROM sip_parents) b
            ANTI JOIN artifact_parents p ON p.artifact_id = b.artifact_id AND p.parent_id = b.parent_id""")
        return added
    finally:
        con.unregister("sip_artifacts")
        con.unregister("sip_parents")


def _when(created_at: str | datetime | None) -> datetime | None:
    return datetime.fromisoformat(created_at) if isinstance(created_at, str) else created_at


class LineageDB:
    def __init__(self, store: StateStore | str | Path):
        self.state = as_store(store)
        self.state.ensure_schema("lineage")

    def record(self, manifests: list[Manifest]) -> None:
        artifacts = pa.Table.from_pylist([
            {"artifact_id": m.artifact_id, "uri": m.uri, "kind": m.kind, "content_hash": m.content_hash,
             "n_rows": m.rows, "config_hash": m.config_hash, "code_version": m.code_version,
             "flow_run_id": m.flow_run_id, "task_run_id": m.task_run_id, "part_of": m.part_of,
             "created_at": _when(m.created_at), "manifest_json": m.model_dump_json()} for m in manifests], schema=ARTIFACTS)
        parents = pa.Table.from_pylist([{"artifact_id": m.artifact_id, "parent_id": p}
                                        for m in manifests for p in m.parents], schema=PARENTS)
        self.record_tables(artifacts, parents)

    def record_tables(self, artifacts: pa.Table, parents: pa.Table) -> int:
        if not artifacts.num_rows and not parents.num_rows:
            return 0
        return self.state.write(lambda con: insert_lineage(con, artifacts, parents))

    def ancestry(self, uri: str) -> list[dict]:
        out = self.state.read(sql("lineage_ancestry"), {"uri": uri})
        for row in out:
            row["manifest"] = json.loads(row.pop("manifest_json"))
        return out
