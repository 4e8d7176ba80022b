"""The one way to write an artifact: its files first, then `commit` (shard manifests, lineage
rows, `_manifest.json` last), for datasets, checkpoints, reports and JSON artifacts alike.

Layout of a dataset at URI:
    URI/<partition>/part-00000.parquet            one shard, written atomically
    URI/<partition>/part-00000.parquet.manifest.json
    URI/_manifest.json                            written last: the commit marker

A dataset without `_manifest.json` is uncommitted (a crash mid-write); `DatasetWriter` clears it
before writing, and `load_committed` never returns it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, Field

from sip_core import __version__

from sip_core.infra import store
from sip_core.infra.writer import ShardWriter

MANIFEST = "_manifest.json"


@dataclass(frozen=True)
class Provenance:
    """Who produced an artifact; the Prefect layer fills the run ids (the library never asks Prefect)."""

    flow_run_id: str | None = None
    task_run_id: str | None = None


class Manifest(BaseModel):
    artifact_id: str
    uri: str
    kind: str
    content_hash: str
    rows: int | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    config_hash: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    code_version: str
    flow_run_id: str | None = None
    task_run_id: str | None = None
    parents: list[str] = Field(default_factory=list)
    parent_uris: list[str] = Field(default_factory=list)
    part_of: str | None = None
    files: list[str] = Field(default_factory=list)
    stats: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


class ArtifactRef(BaseModel):
    """What crosses a task boundary for an artifact: where it is and what it holds, never its rows."""

    uri: str
    content_hash: str
    artifact_id: str
    rows: int | None = None
    stats: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, manifest: Manifest) -> "ArtifactRef":
        return cls(uri=manifest.uri, content_hash=manifest.content_hash, artifact_id=manifest.artifact_id,
                   rows=manifest.rows, stats=manifest.stats)

    def manifest(self, storage_options: dict[str, Any] | None = None) -> Manifest:
        return load_manifest(self.uri, storage_options)


def artifact_id(uri: str, content_hash: str) -> str:
    return hashlib.sha256(f"{uri}\n{content_hash}".encode()).hexdigest()[:20]


@functools.cache
def code_version() -> str:
    """Package version plus the git sha (and `.dirty`) of the checkout the code runs from."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def json_digest(payload: Any) -> str:
    """sha256 of `payload` as JSON with sorted keys: the same config always hashes the same."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def config_hash(config: dict[str, Any]) -> str:
    return json_digest(config)[:16]


def columns_of(schema: pa.Schema) -> dict[str, str]:
    return {f.name: str(f.type) for f in schema}


def file_sha256(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    fs, path = store.filesystem(uri, storage_options)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_manifest(uris: list[str], description: dict[str, Any],
                    storage_options: dict[str, Any] | None = None) -> Manifest:
    """A read-only input (corpus files or a Hub dataset id): the root of every lineage walk."""
    hashes = [file_sha256(u, storage_options) if not u.startswith("hf://") else u for u in uris]
    content = hashlib.sha256("\n".join(hashes).encode()).hexdigest()
    uri = uris[0] if len(uris) == 1 else f"{uris[0]} (+{len(uris) - 1} files)"
    return Manifest(artifact_id=artifact_id(uri, content), uri=uri, kind="source", content_hash=content,
                    code_version=code_version(), files=uris, config=description)


@dataclass
class WriteContext:
    """What every artifact write needs besides its rows."""

    config: dict[str, Any]
    config_hash: str
    parents: list[Manifest]
    provenance: Provenance = Provenance()
    storage_options: dict[str, Any] = field(default_factory=dict)
    lineage: Any = None  # a lineage.LineageDB, or None to skip recording


def load_committed(uri: str, storage_options: dict[str, Any] | None = None) -> Manifest | None:
    marker = store.join(uri, MANIFEST)
    if not store.exists(marker, storage_options):
        return None
    return Manifest.model_validate(store.read_json(marker, storage_options))


def load_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> Manifest:
    """Manifest of a dataset directory or of one shard file."""
    uri = store.normalize(uri)
    for candidate in (store.join(uri, MANIFEST), f"{uri}.manifest.json"):
        if store.exists(candidate, storage_options):
            return Manifest.model_validate(store.read_json(candidate, storage_options))
    raise FileNotFoundError(f"no manifest for {uri}: not a committed sip artifact")


class DatasetWriter(ShardWriter):
    """A dataset written by one process: parts `<uri>/<partition>/part-<k>.parquet`, committed as
    one dataset by `commit`. An uncommitted leftover at `uri` is cleared first, and a failed stage
    leaves nothing behind, not even uncommitted parts."""

    def __init__(self, uri: str, ctx: WriteContext, kind: str = "parquet-dataset", shard_rows: int = 2048,
                 schema: pa.Schema | None = None):
        super().__init__(store.normalize(uri), ctx.storage_options, shard_rows, schema,
                         task_run_id=ctx.provenance.task_run_id)
        self.ctx, self.kind = ctx, kind
        self._shards: list[Manifest] = []
        self._first_schema: pa.Schema | None = None
        store.remove_tree(self.uri, ctx.storage_options)  # an uncommitted leftover is never trusted

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            store.remove_tree(self.uri, self.ctx.storage_options)

    def _flush(self, partition: str, limit: int) -> tuple[dict[str, Any], pa.Schema]:
        part, schema = super()._flush(partition, limit)
        self._first_schema = self._first_schema or schema
        # The shard's manifest file is written at commit, once the dataset id it belongs to is known.
        self._shards.append(shard_manifest(self.ctx, part, schema))
        return part, schema

    def commit(self, stats: dict[str, Any] | None = None) -> Manifest:
        self.close()
        return commit_dataset(self.uri, self.ctx, self._shards, self.schema or self._first_schema, stats, self.kind)

    def uncommitted(self, stats: dict[str, Any] | None = None) -> Manifest:
        """The parts written, as a manifest that is never committed (no `_manifest.json`, no lineage
        row): for a stage that uses what it built this run but must not let a later run reuse it
        (it was built around failed model calls). The next writer at `uri` clears the parts."""
        self.close()
        digest = hashlib.sha256("\n".join(s.content_hash for s in self._shards).encode()).hexdigest()
        return new_manifest(self.ctx, self.uri, self.kind, digest, sum(s.rows or 0 for s in self._shards),
                            self.schema or self._first_schema, files=[s.uri for s in self._shards], stats=stats or {})


def new_manifest(ctx: WriteContext, uri: str, kind: str, digest: str, rows: int | None, schema: pa.Schema | None,
                 task_run_id: str | None = None, **extra) -> Manifest:
    """A manifest for an artifact written under `ctx` (config, parents, provenance, code version)."""
    return Manifest(
        artifact_id=artifact_id(uri, digest), uri=uri, kind=kind, content_hash=digest, rows=rows,
        columns=columns_of(schema) if schema is not None else {}, config_hash=ctx.config_hash,
        config=ctx.config, code_version=code_version(), flow_run_id=ctx.provenance.flow_run_id,
        task_run_id=task_run_id or ctx.provenance.task_run_id, parents=[p.artifact_id for p in ctx.parents],
        parent_uris=[p.uri for p in ctx.parents], **extra)


def shard_manifest(ctx: WriteContext, part: dict[str, Any], schema: pa.Schema | None) -> Manifest:
    """The manifest of one written part (a `ShardWriter` record), by the task run that wrote it."""
    return new_manifest(ctx, part["uri"], "parquet-shard", part["content_hash"], part["rows"], schema,
                        task_run_id=part.get("task_run_id"))


def commit(uri: str, ctx: WriteContext, kind: str, digest: str, files: list[str], rows: int | None = None,
           schema: pa.Schema | None = None, stats: dict[str, Any] | None = None,
           shards: list[Manifest] = ()) -> Manifest:
    """The one commit of every artifact whose files are already written under `uri`: the shards'
    manifests, the lineage rows (parents, the artifact, its shards), then `_manifest.json` last, so
    a reader never trusts a half-committed artifact."""
    uri = store.normalize(uri)
    manifest = new_manifest(ctx, uri, kind, digest, rows, schema, files=files, stats=stats or {})
    for shard in shards:
        shard.part_of = manifest.artifact_id
        store.write_json(f"{shard.uri}.manifest.json", shard.model_dump(), ctx.storage_options)
    if ctx.lineage is not None:
        ctx.lineage.record([*ctx.parents, manifest, *shards])
    store.write_json(store.join(uri, MANIFEST), manifest.model_dump(), ctx.storage_options)
    return manifest


def commit_dataset(uri: str, ctx: WriteContext, shards: list[Manifest], schema: pa.Schema | None,
                   stats: dict[str, Any] | None = None, kind: str = "parquet-dataset") -> Manifest:
    """Commit shard files already written under `uri` as one dataset. Its content hash is over its
    shards' hashes, in the given order."""
    digest = hashlib.sha256("\n".join(s.content_hash for s in shards).encode()).hexdigest()
    return commit(uri, ctx, kind, digest, [s.uri for s in shards], sum(s.rows or 0 for s in shards), schema,
                  stats, shards)


def shard_uris(manifest: Manifest, partition: str | None = None) -> list[str]:
    if partition is None:
        return list(manifest.files)
    prefix = store.join(manifest.uri, partition) + "/"
    return [f for f in manifest.files if f.startswith(prefix)]


def write_json_artifact(uri: str, name: str, payload: dict[str, Any], ctx: WriteContext,
                        kind: str = "report") -> Manifest:
    """A small JSON artifact (a report, an audit) with the same manifest and lineage as datasets."""
    uri = store.normalize(uri)
    data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
    file_uri = store.join(uri, name)
    store.write_bytes(file_uri, data, ctx.storage_options)
    return commit(uri, ctx, kind, hashlib.sha256(data).hexdigest(), [file_uri], stats=payload)


def config_manifest(name: str, payload: dict[str, Any]) -> Manifest:
    """A configuration as a lineage node (e.g. the judge a model was trained against)."""
    digest = json_digest(payload)
    uri = f"config://{name}/{digest[:16]}"
    return Manifest(artifact_id=artifact_id(uri, digest), uri=uri, kind="config", content_hash=digest,
                    code_version=code_version(), config=payload)


def model_manifest(ref: str, folder: str) -> Manifest:
    """A base model as a lineage root: its reference plus a hash of its local files."""
    files = sorted(str(p) for p in Path(folder).iterdir() if p.is_file())
    return source_manifest(files, {"model": ref, "kind": "model"})
