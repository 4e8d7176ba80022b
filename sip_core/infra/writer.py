"""The one Parquet shard writer: rows buffered per partition, flushed as fixed-size parts.

Each part `<uri>/<partition>/<name>` is written atomically and described by a small record (URI,
partition, number, rows, content hash, task run), so the writer never needs to know whether the
parts make a dataset on their own (`artifacts.DatasetWriter`) or are one input shard's share of a
dataset that many processes write and one commits later (the data stage's filter and chunk).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa

from sip_core.infra import store


def part_name(k: int, index: int | None = None) -> str:
    """`part-<k>.parquet`, or `part-<index>-<k>.parquet` for the parts of input shard `index`."""
    return f"part-{k:05d}.parquet" if index is None else f"part-{index:05d}-{k:05d}.parquet"


class ShardWriter:
    """Buffers tables per partition and writes a part whenever `shard_rows` rows are buffered;
    `close` writes the rest and returns the part records, in the order they were written.

    `schema`: every table is reduced and cast to it (None: tables are written as they come).
    `index`: the input shard these parts come from, so shards write side by side under one `uri`
    and a retried shard overwrites its earlier try. On an error the parts written so far are removed."""

    def __init__(self, uri: str, storage_options: dict[str, Any], shard_rows: int, schema: pa.Schema | None = None,
                 index: int | None = None, task_run_id: str | None = None):
        self.uri, self.storage_options, self.shard_rows, self.schema = uri, storage_options, shard_rows, schema
        self.index, self.task_run_id = index, task_run_id
        self._buffers: dict[str, list[pa.Table]] = {}
        self._buffered: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self.parts: list[dict[str, Any]] = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.remove()

    def remove(self) -> None:
        for part in self.parts:
            store.remove_file(part["uri"], self.storage_options)

    def write(self, table: pa.Table, partition: str = "") -> None:
        if self.schema is not None:
            table = table.select(self.schema.names).cast(self.schema)
        self._buffers.setdefault(partition, []).append(table)
        self._buffered[partition] = self._buffered.get(partition, 0) + table.num_rows
        while self._buffered[partition] >= self.shard_rows:
            self._flush(partition, self.shard_rows)

    def _flush(self, partition: str, limit: int) -> tuple[dict[str, Any], pa.Schema]:
        """Write the first `limit` buffered rows of `partition` as its next part: (record, schema)."""
        whole = pa.concat_tables(self._buffers.pop(partition))
        head, tail = whole.slice(0, limit), whole.slice(limit)
        self._buffers[partition] = [tail] if tail.num_rows else []
        self._buffered[partition] = tail.num_rows
        k = self._counts.get(partition, 0)
        self._counts[partition] = k + 1
        uri = store.join(self.uri, partition, part_name(k, self.index))
        data = store.parquet_bytes(head.combine_chunks())
        store.write_bytes(uri, data, self.storage_options)
        part = {"uri": uri, "partition": partition, "k": k, "rows": head.num_rows,
                "content_hash": hashlib.sha256(data).hexdigest(), "task_run_id": self.task_run_id}
        self.parts.append(part)
        return part, head.schema

    def close(self) -> list[dict[str, Any]]:
        for partition in list(self._buffers):
            if self._buffered.get(partition):
                self._flush(partition, self._buffered[partition])
        return self.parts
