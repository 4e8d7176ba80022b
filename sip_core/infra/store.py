"""The one way to read and write bytes: fsspec URIs, local paths and s3:// alike.

Writes are atomic per file: a local file is written beside its target and renamed into place;
an object store PUT is atomic by itself. A *dataset* (many files) is committed by writing its
manifest last, and readers trust only committed datasets (see artifacts.py).
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs, path


def join(uri: str, *parts: str) -> str:
    # Empty parts (the unpartitioned "" partition) are skipped: "a//b" would be a distinct S3 key,
    # and a local path that normalize() spells differently from the URI the lineage DB recorded.
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts if p.strip("/"))])


def normalize(uri: str) -> str:
    """Absolute local paths, untouched remote URIs: one spelling per artifact in the lineage DB."""
    if is_remote(uri):
        return uri.rstrip("/")
    return os.path.abspath(uri.removeprefix("file://"))


def exists(uri: str, storage_options: dict[str, Any] | None = None) -> bool:
    fs, path = filesystem(uri, storage_options)
    return fs.exists(path)


def write_bytes(uri: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    fs, path = filesystem(uri, storage_options)
    if is_remote(uri):
        fs.pipe_file(path, data)  # a single PUT: the object appears whole or not at all
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    fs, path = filesystem(uri, storage_options)
    return fs.cat_file(path)


def write_json(uri: str, obj: Any, storage_options: dict[str, Any] | None = None) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), storage_options)


def read_json(uri: str, storage_options: dict[str, Any] | None = None) -> Any:
    return json.loads(read_bytes(uri, storage_options))


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def read_parquet(uri: str, storage_options: dict[str, Any] | None = None, columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(uri, storage_options)
    with fs.open(path, "rb") as fh:
        return pq.read_table(fh, columns=columns)


def remove_tree(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    fs, path = filesystem(uri, storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def files_under(uri: str, storage_options: dict[str, Any] | None = None) -> set[str]:
    """Every file below `uri` (none if it does not exist), spelled as `join(uri, ...)` spells them."""
    fs, path = filesystem(uri, storage_options)
    if not fs.exists(path):
        return set()
    base = normalize(uri)
    return {join(base, f[len(path.rstrip("/")) + 1:]) for f in fs.find(path)}


def remove_file(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    fs, path = filesystem(uri, storage_options)
    if fs.exists(path):
        fs.rm(path)
