"""The artifact store, unchanged, on s3:// against a real S3-compatible server (moto, 127.0.0.1).

Everything reaches the server the production way: s3fs with `run.storage_options`. What landed is
checked independently, with boto3 listings and with pyarrow's and polars' own S3 clients.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from sip_core.infra import artifacts, paths, store
from sip_core.infra.artifacts import DatasetWriter, WriteContext
from sip_core.config import SipConfig
from sip_core.infra.lineage import LineageDB
from sip_core.infra.ancestry import _from_manifests, ancestry

try:
    from s3_server import S3Bucket, moto_server, s3  # noqa: F401  (fixtures)
except ImportError:  # tests/ imported as a package
    from tests.s3_server import S3Bucket, moto_server, s3  # noqa: F401

pytestmark = pytest.mark.s3

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
C4 = DATA / "corpus" / "c4_sample" / "c4-sample.00000-of-00001.json.gz"
SUFFIX = 64  # not the default (128), so "exactly N tokens" really follows the config


@pytest.fixture(autouse=True)
def _bundled_data(monkeypatch: pytest.MonkeyPatch) -> None:
    if not (DATA / "corpus").is_dir():
        pytest.skip(f"bundled data not found at {DATA}")
    monkeypatch.setenv("SIP_DATA_DIR", str(DATA))


def _config(s3: S3Bucket, state_dir: Path | None, **model) -> SipConfig:
    return SipConfig.model_validate({
        "run": {"root": s3.uri("run"), "state_dir": str(state_dir) if state_dir else None,
                "storage_options": s3.storage_options},
        "data": {"max_docs": 200, "suffix_tokens": SUFFIX, "shard_rows": 64},
        "model": model,
    })


def _ctx(s3: S3Bucket, lineage=None) -> WriteContext:
    return WriteContext(config={"test": True}, config_hash="cafe", parents=[], lineage=lineage,
                        storage_options=s3.storage_options)


def _parquet(keys) -> list[str]:
    return [k for k in keys if k.endswith(".parquet")]


def _table(start: int, n: int) -> pa.Table:
    ids = range(start, start + n)
    return pa.table({"i": pa.array(ids, pa.int64()), "s": [f"row-{k}" for k in ids]})


# ---------------------------------------------------------------------------------------------
# 1. store primitives and DatasetWriter


def test_store_primitives(s3: S3Bucket) -> None:
    so = s3.storage_options
    uri = s3.uri("prims/a/b.bin")
    assert not store.exists(uri, so)
    store.write_bytes(uri, b"\x00hello", so)
    assert store.exists(uri, so)
    assert store.read_bytes(uri, so) == b"\x00hello"
    assert s3.get(uri) == b"\x00hello"  # really on the server, under the expected key
    store.write_bytes(uri, b"again", so)  # overwrite
    assert store.read_bytes(uri, so) == b"again"

    store.write_json(s3.uri("prims/m.json"), {"b": 1, "a": [1, 2]}, so)
    assert store.read_json(s3.uri("prims/m.json"), so) == {"a": [1, 2], "b": 1}
    assert store.join(s3.uri("prims"), "", "x") == s3.uri("prims/x")  # no "//" keys
    assert store.normalize(s3.uri("prims") + "/") == s3.uri("prims")

    store.write_bytes(s3.uri("keep/x"), b"x", so)
    assert set(s3.objects("prims/")) == {"prims/a/b.bin", "prims/m.json"}
    store.remove_tree(s3.uri("prims"), so)
    assert s3.objects("prims/") == {}
    assert not store.exists(uri, so)
    store.remove_tree(s3.uri("prims"), so)  # absent: a no-op
    assert set(s3.objects()) == {"keep/x"}  # a sibling prefix is untouched


def test_dataset_writer_commit(s3: S3Bucket, tmp_path: Path) -> None:
    so = s3.storage_options
    uri = s3.uri("ds")
    db = LineageDB(tmp_path / "lineage.duckdb")
    writer = DatasetWriter(uri, _ctx(s3, db), shard_rows=2)
    writer.write(_table(0, 5), "a")  # two full shards now, one row buffered
    writer.write(_table(5, 1))  # unpartitioned
    assert len(_parquet(s3.objects("ds/"))) == 2  # full shards are on the server already
    assert artifacts.load_committed(uri, so) is None  # but the commit marker is not
    assert "ds/_manifest.json" not in s3.objects("ds/")
    manifest = writer.commit({"note": "ok"})

    keys = set(s3.objects("ds/"))
    shards = {"ds/a/part-00000.parquet", "ds/a/part-00001.parquet", "ds/a/part-00002.parquet",
              "ds/part-00000.parquet"}
    assert keys == shards | {f"{k}.manifest.json" for k in shards} | {"ds/_manifest.json"}
    loaded = artifacts.load_committed(uri, so)
    assert loaded is not None and loaded.model_dump() == manifest.model_dump()
    assert loaded.uri == uri and loaded.rows == 6 and loaded.stats == {"note": "ok"}
    assert sorted(loaded.files) == sorted(s3.uri(k) for k in shards)
    assert artifacts.shard_uris(loaded, "a") == [s3.uri(f"ds/a/part-0000{i}.parquet") for i in range(3)]

    rows = []
    for shard_uri in loaded.files:
        shard = artifacts.load_manifest(shard_uri, so)  # the per-shard manifest
        assert shard.kind == "parquet-shard" and shard.uri == shard_uri
        assert shard.content_hash == hashlib.sha256(s3.get(shard_uri)).hexdigest()
        rows += store.read_parquet(shard_uri, so).column("i").to_pylist()
    assert sorted(rows) == list(range(6))
    # the lineage DB got the dataset and its shards, under their s3 URIs
    walked = db.ancestry(s3.uri("ds/part-00000.parquet"))
    assert [(r["depth"], r["kind"], r["uri"]) for r in walked] == [
        (0, "parquet-shard", s3.uri("ds/part-00000.parquet")), (1, "parquet-dataset", uri)]


def test_dataset_writer_failure_leaves_nothing(s3: S3Bucket) -> None:
    so = s3.storage_options
    uri = s3.uri("broken")
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(uri, _ctx(s3), shard_rows=2) as writer:
            writer.write(_table(0, 7), "p")  # three shards flushed to the server
            assert len(_parquet(s3.objects("broken/"))) == 3
            raise RuntimeError("boom")
    assert s3.objects("broken/") == {}
    assert artifacts.load_committed(uri, so) is None

    # a crash that skipped __exit__ leaves uncommitted shards: the next writer clears them first
    crashed = DatasetWriter(uri, _ctx(s3), shard_rows=2)
    crashed.write(_table(0, 4), "old")
    assert len(_parquet(s3.objects("broken/"))) == 2
    with DatasetWriter(uri, _ctx(s3), shard_rows=2) as writer:
        assert s3.objects("broken/") == {}
        writer.write(_table(0, 1), "new")
        writer.commit()
    assert set(s3.objects("broken/")) == {"broken/new/part-00000.parquet",
                                          "broken/new/part-00000.parquet.manifest.json", "broken/_manifest.json"}


# ---------------------------------------------------------------------------------------------
# 2. the library data stage end to end on s3


def _walk(rows: list[dict]) -> set[tuple[int, str, str]]:
    return {(r["depth"], r["kind"], r["uri"]) for r in rows}


def test_prepare_stages_on_s3(s3: S3Bucket, tmp_path: Path) -> None:
    from sip_core.infra.run_context import RunContext
    from sip_core.data.prepare import filter_documents, ingest_documents, materialize_chunks

    cfg = _config(s3, tmp_path / "state")
    so = cfg.run.storage_options
    env = RunContext(cfg)
    docs = ingest_documents(env)
    filtered = filter_documents(env, docs)
    chunks = materialize_chunks(env, filtered)

    prefix = s3.uri("run/prepare") + "/"
    for m in (docs, filtered, chunks):
        assert m.uri.startswith(prefix) and all(f.startswith(m.uri + "/") for f in m.files)
        assert artifacts.load_committed(m.uri, so) == m
        assert store.exists(store.join(m.uri, artifacts.MANIFEST), so)
    assert docs.rows == docs.stats["documents"] == 200
    assert filtered.rows == 200 and sum(filtered.stats["labels"].values()) == 200
    assert docs.parent_uris == [str(C4)]
    assert filtered.parent_uris == [docs.uri] and chunks.parent_uris == [filtered.uri]
    keys = set(s3.objects())
    assert keys and all(k.startswith("run/prepare/") and "//" not in k for k in keys)
    assert {s3.uri(k) for k in keys if k.endswith(".parquet")} == {*docs.files, *filtered.files, *chunks.files}
    assert not list(tmp_path.glob("**/*.parquet"))  # nothing went to local disk instead

    # chunks, read back by S3 clients that are not s3fs
    host_port = s3.endpoint.removeprefix("http://")
    arrow_fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", endpoint_override=host_port,
                                 scheme="http", region="us-east-1")
    arrow = pa.concat_tables(pq.read_table(f.removeprefix("s3://"), filesystem=arrow_fs) for f in chunks.files)
    polars = pl.read_parquet(list(chunks.files), storage_options=s3.polars_options)
    assert arrow.num_rows == polars.height == chunks.rows > 0
    assert sorted(arrow.column("chunk_id").to_pylist()) == sorted(polars["chunk_id"].to_list())
    assert set(polars["suffix_ids"].list.len().to_list()) == {SUFFIX}
    assert all(len(ids) == SUFFIX for ids in arrow.column("suffix_ids").to_pylist())
    assert (polars["prefix_ids"].list.len() >= cfg.data.min_prefix_tokens).all()
    by_split = polars.group_by("split").len()
    assert dict(zip(by_split["split"], by_split["len"])) == chunks.stats["chunks"]
    assert set(polars["filter_label"]) <= {"unsafe", "rest"}

    # lineage DB (local DuckDB file) records s3 URIs; a chunk shard walks back to the source file
    assert (tmp_path / "state" / "lineage.duckdb").is_file()
    shard = next(f for f in chunks.files if "/train/" in f)
    rows = ancestry(shard, cfg)
    assert rows and rows[0]["uri"] == shard and rows[0]["kind"] == "parquet-shard"
    uris = [r["uri"] for r in rows]
    assert {shard, chunks.uri, filtered.uri, docs.uri, str(C4)} == set(uris)
    assert all(u.startswith("s3://") for u in uris if u != str(C4))
    source = rows[-1]
    assert source["kind"] == "source" and source["uri"] == str(C4)
    assert source["depth"] == max(r["depth"] for r in rows)
    assert source["manifest"]["content_hash"] == hashlib.sha256(
        hashlib.sha256(C4.read_bytes()).hexdigest().encode()).hexdigest()

    # without the DB: the manifests on s3 alone give the same walk
    no_db = cfg.model_copy(update={"run": cfg.run.model_copy(update={"state_dir": str(tmp_path / "empty")})})
    from_manifests = ancestry(shard, no_db)
    assert not LineageDB(tmp_path / "empty" / "lineage.duckdb").ancestry(shard)  # so this came from manifests
    assert _walk(from_manifests) == _walk(rows)
    assert _walk(_from_manifests(shard, so)) == _walk(rows)
    # an unpartitioned shard (docs) steps to its own dataset, not to the folder above it
    docs_shard = docs.files[0]
    assert docs_shard == docs.uri + "/part-00000.parquet"
    assert _walk(_from_manifests(docs_shard, so)) == _walk(ancestry(docs_shard, cfg)) == {
        (0, "parquet-shard", docs_shard), (1, "parquet-dataset", docs.uri), (1, "source", str(C4))}

    # a second pass reuses every committed output and writes nothing
    before = s3.objects()
    again = materialize_chunks(env, filter_documents(env, ingest_documents(env)))
    assert again == chunks
    assert s3.objects() == before


# ---------------------------------------------------------------------------------------------
# 3. the Prefect flow on s3, and its cache


def _task_states(flow_state, expected: int = 3) -> dict[str, str]:
    """Final state name per task of a flow run, as the Prefect API recorded it (task states reach
    the server as events, so give it a moment)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    deadline = time.monotonic() + 15
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=50)
            done = len(runs) >= expected and all(r.state and r.state.is_final() for r in runs)
            if done or time.monotonic() > deadline:
                return {r.name.rsplit("-", 1)[0]: r.state.name if r.state else None for r in runs}
            time.sleep(0.2)


@pytest.fixture
def prefect_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A private PREFECT_HOME (result store, cache records, ephemeral server DB) for this test."""
    home = tmp_path / "prefect"
    env = {"PREFECT_HOME": str(home), "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": ""}
    for key, value in env.items():
        if value:
            monkeypatch.setenv(key, value)
        else:
            monkeypatch.delenv(key, raising=False)
    already = "prefect" in sys.modules
    import prefect.settings as ps

    if not already:  # settings were read from the environment just now
        yield
        return
    # prefect was imported earlier in this session: override its live settings as well
    with ps.temporary_settings(updates={ps.PREFECT_HOME: home, ps.PREFECT_LOCAL_STORAGE_PATH: home / "storage",
                                        ps.PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        yield


def test_prepare_flow_on_s3_and_cache(s3: S3Bucket, tmp_path: Path, prefect_env, monkeypatch) -> None:
    import tasks.prepare as tp
    from flows.prepare import prepare

    calls: list[str] = []
    for name in ("ingest_documents", "filter_documents", "materialize_chunks"):
        real = getattr(tp, name)
        monkeypatch.setattr(tp, name, lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))

    # No run.state_dir: a remote root keeps its lineage DB under $SIP_CACHE_DIR/state/<hash of root>.
    # The converted bundled model stays where it already is (model.cache_dir), not re-converted.
    models = str(paths.cache_home() / "models")
    monkeypatch.setenv("SIP_CACHE_DIR", str(tmp_path / "cache"))
    cfg = _config(s3, None, cache_dir=models)
    first = prepare(cfg)
    assert calls == ["ingest_documents", "filter_documents", "materialize_chunks"]
    assert set(first) == {"docs", "filtered", "chunks"}
    for ref in first.values():
        assert ref.uri.startswith(s3.uri("run/prepare") + "/")
        committed = artifacts.load_committed(ref.uri, cfg.run.storage_options)
        assert committed is not None and committed.content_hash == ref.content_hash
        assert committed.flow_run_id and committed.task_run_id  # provenance from the Prefect layer
    assert first["docs"].rows == 200 and first["chunks"].rows > 0
    db = paths.state_dir_for(cfg.run.root, None) / "lineage.duckdb"
    assert db.is_file() and db.parent.parent == tmp_path / "cache" / "state"
    assert not (tmp_path / "cache" / "models").exists()
    shard = artifacts.load_manifest(first["chunks"].uri, cfg.run.storage_options).files[0]
    rows = LineageDB(db).ancestry(shard)
    assert rows == ancestry(shard, cfg) and rows[-1]["kind"] == "source" and rows[-1]["uri"] == str(C4)
    assert all(r["flow_run_id"] for r in rows if r["kind"] != "source")

    before = s3.objects()
    calls.clear()
    state = prepare(cfg, return_state=True)
    second = state.result()
    assert second == first
    assert calls == []  # every task was a Prefect cache hit: no stage function ran
    assert _task_states(state) == {"ingest-documents": "Cached", "filter-shard": "Cached", "filter-documents": "Cached",
                                   "chunk-shard": "Cached", "materialize-chunks": "Cached"}
    assert s3.objects() == before  # same keys, ETags and LastModified: nothing rewritten

    # a cache hit whose artifact vanished from the store is redone (flows/_common.run_cached)
    chunks_marker = store.join(first["chunks"].uri, artifacts.MANIFEST)
    s3.client().delete_object(Bucket=s3.bucket, Key=chunks_marker.removeprefix(f"s3://{s3.bucket}/"))
    third = prepare(cfg)
    assert calls == ["materialize_chunks"]
    assert third == first
    assert artifacts.load_committed(first["chunks"].uri, cfg.run.storage_options) is not None
