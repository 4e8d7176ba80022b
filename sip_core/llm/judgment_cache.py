"""The judgment cache's store: every answered model call by its key.

It lives wherever `run.state` says (sip_core/infra/state.py): the local DuckDB file, or a DuckLake
store shared by a cluster. Each key is stored once: a batch inserts only keys not yet stored, and
replaces only final errors (which are not answers and are asked again).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from sip_core.infra.db import sql
from sip_core.infra.state import StateStore, as_store

SCHEMA = pa.schema([
    ("key", pa.string()), ("model_id", pa.string()), ("prompt", pa.string()), ("messages_json", pa.string()),
    ("sampling_json", pa.string()), ("seed", pa.int64()), ("raw_output", pa.string()), ("parsed_json", pa.string()),
    ("status", pa.string()), ("parse_error", pa.string()), ("error", pa.string()), ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()), ("latency_s", pa.float64()), ("attempts", pa.int32()),
    ("created_at", pa.timestamp("us", tz="UTC")), ("flow_run_id", pa.string()), ("task_run_id", pa.string())])
COLUMNS = tuple(SCHEMA.names)
_COLS = ", ".join(COLUMNS)

# Up to this many keys go into a query as a constant IN list of literals, which DuckDB pushes into
# the table scan (a parameter list or a join against the batch becomes a hash join over the whole
# table instead: 64 keys in a 100k-row cache, 4 ms vs 26-60 ms). Larger batches (imports) are
# worth one scan.
IN_LIST_MAX = 2048


def key_filter(keys: Sequence[str], source: str) -> str:
    """`key IN (...)` for `keys`: constant literals when few, else the keys of `source` (a query)."""
    if len(keys) <= IN_LIST_MAX:
        return "key IN (" + ", ".join("'" + k.replace("'", "''") + "'" for k in keys) + ")"
    return f"key IN ({source})"


def one_per_key(table: pa.Table) -> pa.Table:
    """A batch with each key once: an answer beats a final error, then the newest wins."""
    if pc.count_distinct(table["key"]).as_py() == table.num_rows:
        return table
    best: dict[str, tuple[tuple, int]] = {}
    for i, (key, status, created) in enumerate(zip(*(table[c].to_pylist() for c in ("key", "status", "created_at")))):
        rank = (status != "error", created)
        if key not in best or rank >= best[key][0]:
            best[key] = (rank, i)
    return table.take(sorted(i for _, i in best.values()))


def insert_judgments(con: duckdb.DuckDBPyConnection, table: pa.Table) -> int:
    """Insert-if-absent of `table` (columns as SCHEMA) inside the caller's write turn; rows added.
    Final errors the batch answers are replaced; any other stored key is kept as it is."""
    table = one_per_key(table.select(list(COLUMNS)).cast(SCHEMA))
    con.register("sip_incoming", table)
    try:
        keys = table["key"].to_pylist()
        answered = [k for k, status in zip(keys, table["status"].to_pylist()) if status != "error"]
        if answered:
            where = key_filter(answered, "SELECT key FROM sip_incoming WHERE status <> 'error'")
            con.execute(f"DELETE FROM judgments WHERE status = 'error' AND {where}")
        where = key_filter(keys, "SELECT key FROM sip_incoming")
        return con.execute(f"""INSERT INTO judgments ({_COLS}) SELECT {_COLS} FROM sip_incoming b
            ANTI JOIN (SELECT key FROM judgments WHERE {where}) j ON j.key = b.key""").fetchone()[0]
    finally:
        con.unregister("sip_incoming")


class JudgmentCache:
    def __init__(self, store: StateStore | str | Path):
        self.state = as_store(store)
        self.state.ensure_schema("judgments")

    def lookup(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored answers (ok or unparseable) by key; final errors are not answers and are asked again."""
        if not keys:
            return {}
        unique = list(set(keys))
        small = len(unique) <= IN_LIST_MAX
        where = key_filter(unique, "SELECT unnest(?)")
        rows = self.state.read(f"SELECT * FROM judgments WHERE status <> 'error' AND {where}", None if small else [unique])
        return {row["key"]: row for row in rows}

    def store(self, rows: Sequence[dict[str, Any]]) -> int:
        """Write a batch in one transaction (all or nothing); returns how many keys were new."""
        if not rows:
            return 0
        return self.store_table(pa.Table.from_pylist([{c: row[c] for c in COLUMNS} for row in rows], schema=SCHEMA))

    def store_table(self, table: pa.Table) -> int:
        return self.state.write(lambda con: insert_judgments(con, table)) if table.num_rows else 0

    def record_lookups(self, counts: dict[tuple[str, str], tuple[int, int]]) -> None:
        if not counts:
            return
        now = datetime.now(timezone.utc)
        table = pa.Table.from_pylist([{"prompt": p, "model_id": m, "hits": h, "misses": miss, "looked_at": now}
                                      for (p, m), (h, miss) in counts.items()])

        def append(con: duckdb.DuckDBPyConnection) -> None:
            con.register("sip_lookups", table)
            try:
                con.execute("INSERT INTO cache_lookups SELECT prompt, model_id, hits, misses, looked_at FROM sip_lookups")
            finally:
                con.unregister("sip_lookups")

        self.state.write(append, turn=False)  # counters only add up: no turn needed

    def stats(self) -> list[dict[str, Any]]:
        return self.state.read(sql("judgments_stats"))

    def count(self) -> int:
        return self.state.read("SELECT count(*) AS n FROM judgments")[0]["n"]
