"""Artifact store: atomic shards, commit markers, manifests, and the DuckDB lineage walk."""

from __future__ import annotations

import multiprocessing as mp

import pyarrow as pa
import pytest

from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import DatasetWriter, Provenance, WriteContext
from sip_core.infra.lineage import LineageDB


def _ctx(tmp_path, parents=(), db=None):
    return WriteContext(config={"k": 1}, config_hash="cfg", parents=list(parents), provenance=Provenance("f", "t"),
                        lineage=db or LineageDB(tmp_path / "lineage.duckdb"))


def _table(n, start=0):
    return pa.table({"x": list(range(start, start + n))})


def test_shards_are_fixed_size_and_committed_last(tmp_path):
    uri = str(tmp_path / "ds")
    writer = DatasetWriter(uri, _ctx(tmp_path), shard_rows=4)
    writer.write(_table(5), "a")
    writer.write(_table(6, 5), "a")
    assert artifacts.load_committed(uri) is None  # shards on disk, but nothing committed yet
    manifest = writer.commit({"note": "x"})
    assert [r for r in (store.read_parquet(f).num_rows for f in manifest.files)] == [4, 4, 3]
    assert manifest.rows == 11 and manifest.stats == {"note": "x"} and manifest.columns == {"x": "int64"}
    assert artifacts.load_committed(uri) == manifest
    assert sorted(p.name for p in (tmp_path / "ds" / "a").iterdir()) == [
        f"part-0000{i}.parquet{s}" for i in range(3) for s in ("", ".manifest.json")]


def test_a_failed_write_leaves_nothing_and_a_rewrite_clears_leftovers(tmp_path):
    uri = str(tmp_path / "ds")
    with pytest.raises(RuntimeError):
        with DatasetWriter(uri, _ctx(tmp_path), shard_rows=2) as writer:
            writer.write(_table(5))
            raise RuntimeError("crash mid-stage")
    assert not (tmp_path / "ds").exists()
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "part-00099.parquet").write_bytes(b"half a file")  # e.g. a kill -9 leftover
    with DatasetWriter(uri, _ctx(tmp_path), shard_rows=2) as writer:
        writer.write(_table(3))
        manifest = writer.commit()
    assert not (tmp_path / "ds" / "part-00099.parquet").exists() and manifest.rows == 3


def test_shard_parts_are_named_by_input_shard_and_a_failed_shard_removes_only_its_own(tmp_path):
    from sip_core.infra.writer import ShardWriter

    uri = str(tmp_path / "ds")
    schema = pa.schema([("x", pa.int64())])
    with ShardWriter(uri, {}, 2, schema, index=1, task_run_id="t1") as kept:
        kept.write(_table(3), "p")
        parts = kept.close()
    assert [(p["partition"], p["k"], p["rows"], p["task_run_id"]) for p in parts] == [("p", 0, 2, "t1"),
                                                                                       ("p", 1, 1, "t1")]
    assert [p["uri"].rsplit("/", 1)[1] for p in parts] == ["part-00001-00000.parquet", "part-00001-00001.parquet"]
    assert artifacts.load_committed(uri) is None  # parts alone are not a dataset
    with pytest.raises(RuntimeError):
        with ShardWriter(uri, {}, 2, schema, index=2) as failed:
            failed.write(_table(4), "p")
            raise RuntimeError("crash mid-shard")
    assert sorted(p.name for p in (tmp_path / "ds" / "p").iterdir()) == [p["uri"].rsplit("/", 1)[1] for p in parts]


def test_content_hash_depends_on_content_only(tmp_path):
    def write(name, table):
        with DatasetWriter(str(tmp_path / name), _ctx(tmp_path), shard_rows=10) as w:
            w.write(table)
            return w.commit()

    a, b, c = write("a", _table(5)), write("b", _table(5)), write("c", _table(5, 1))
    assert a.content_hash == b.content_hash != c.content_hash
    assert a.artifact_id != b.artifact_id  # same bytes at another URI is another artifact


def test_lineage_walks_from_a_shard_to_the_source(tmp_path):
    src = tmp_path / "corpus.jsonl"
    src.write_text('{"text": "hi"}\n')
    source = artifacts.source_manifest([str(src)], {"source": str(src)})
    db = LineageDB(tmp_path / "lineage.duckdb")
    with DatasetWriter(str(tmp_path / "docs"), _ctx(tmp_path, [source], db), shard_rows=10) as w:
        w.write(_table(3))
        docs = w.commit()
    with DatasetWriter(str(tmp_path / "chunks"), _ctx(tmp_path, [docs], db), shard_rows=2) as w:
        w.write(_table(3), "train")
        chunks = w.commit()
    rows = db.ancestry(chunks.files[1])
    # a shard names its dataset (part_of) and, like it, the dataset's parents
    assert [(r["depth"], r["kind"], r["uri"]) for r in rows] == [
        (0, "parquet-shard", chunks.files[1]), (1, "parquet-dataset", chunks.uri),
        (1, "parquet-dataset", docs.uri), (2, "source", str(src))]
    assert rows[-1]["uri"] == str(src) and rows[1]["flow_run_id"] == "f" and rows[1]["task_run_id"] == "t"
    assert db.ancestry(str(tmp_path / "unknown")) == []


def _record_many(path, worker):
    db = LineageDB(path)
    for i in range(20):
        m = artifacts.Manifest(artifact_id=f"{worker}-{i}", uri=f"/x/{worker}/{i}", kind="t", content_hash="h",
                               code_version="v", parents=[f"{worker}-{i - 1}"] if i else [])
        db.record([m])


def test_two_processes_share_the_lineage_db_without_losing_rows(tmp_path):
    path = tmp_path / "lineage.duckdb"
    LineageDB(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_record_many, args=(path, w)) for w in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM artifacts").fetchone()[0] == 40
        assert con.execute("SELECT count(*) FROM artifact_parents").fetchone()[0] == 38
