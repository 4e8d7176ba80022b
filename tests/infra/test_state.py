"""run.state: one interface over the local DuckDB files and a DuckLake store; bad state is one line.

The DuckLake cases here use a DuckDB-file catalog (one machine, no server); the Postgres catalog and
many writers are in test_state_postgres.py and test_state_cluster.py.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from flows.cli import main
from sip_core.config import SipConfig
from sip_core.infra.artifacts import Manifest
from sip_core.infra.ducklake import catalog_target, redact
from sip_core.infra.lineage import LineageDB
from sip_core.infra.run_context import RunContext
from sip_core.infra.state import LocalStore, StateError, open_state
from sip_core.llm.judgment_cache import JudgmentCache

# The first bytes of a DuckDB file written by duckdb 2.0.1 (storage version 999, checksummed header):
# what a state folder written by another duckdb version starts with.
DUCKDB_2_HEADER = bytes.fromhex(
    "013fc81d7db1ae604455434be7030000000000000000000000000000000000000000000000000000000000000000000000000000"
    "76322e302e3100000000000000000000000000000000000000000000000000003864373831313465393000000000000000000000"
    "0000000000000000000000000000000000000000878ed55db449054e4130d538fb22947b")


def judgment(key: str, status: str = "ok", answer: str = "FINAL DECISION: YES") -> dict:
    return {"key": key, "model_id": "m", "prompt": "safety@1", "messages_json": "[]", "sampling_json": "{}",
            "seed": 0, "raw_output": None if status == "error" else answer, "parsed_json": "true",
            "status": status, "parse_error": None, "error": "HTTP 500" if status == "error" else None,
            "prompt_tokens": 3, "completion_tokens": 2, "latency_s": 0.01, "attempts": 1,
            "created_at": datetime.now(timezone.utc), "flow_run_id": None, "task_run_id": None}


def manifest(uri: str, parents: list[Manifest] = ()) -> Manifest:
    return Manifest(artifact_id=f"id-{uri.rsplit('/', 1)[-1]}", uri=uri, kind="dataset", content_hash="h" * 16,
                    rows=1, code_version="test", parents=[p.artifact_id for p in parents], parent_uris=[p.uri for p in parents])


def cfg(tmp_path, state: str | None = None, state_dir: str = "state") -> SipConfig:
    return SipConfig.model_validate({"run": {"root": str(tmp_path / "root"), "state_dir": str(tmp_path / state_dir),
                                             "state": state}})


@pytest.fixture(params=["local", "ducklake"])
def place(request, tmp_path):
    location = None if request.param == "local" else f"ducklake:{tmp_path / 'catalog.ducklake'}"
    return open_state(location, tmp_path / "state", str(tmp_path / "root"))


def test_each_key_is_stored_once_and_an_answer_replaces_a_final_error(place):
    cache = JudgmentCache(place.judgments)
    assert cache.store([judgment("a", "error"), judgment("b"), judgment("b", answer="other")]) == 2
    assert cache.store([judgment("a"), judgment("b", answer="third"), judgment("c")]) == 2
    assert cache.count() == 3
    found = cache.lookup(["a", "b", "c", "d"])
    assert sorted(found) == ["a", "b", "c"] and found["a"]["status"] == "ok"
    assert found["b"]["raw_output"] == "other"  # the newest of its batch; a later batch never replaces it
    cache.record_lookups({("safety@1", "m"): (2, 3)})
    [row] = cache.stats()
    assert (row["hits"], row["misses"], row["stored"]) == (2, 3, 3)


def test_lineage_records_each_artifact_once_and_walks_to_the_sources(place):
    lineage = LineageDB(place.lineage)
    src = manifest("/data/src")
    mid = manifest("/data/mid", [src])
    top = manifest("/data/top", [mid])
    lineage.record([src, mid])
    lineage.record([src, mid, top])
    walk = lineage.ancestry("/data/top")
    assert [(r["depth"], r["uri"]) for r in walk] == [(0, "/data/top"), (1, "/data/mid"), (2, "/data/src")]
    assert place.lineage.read("SELECT count(*) AS n FROM artifacts")[0]["n"] == 3
    assert place.lineage.read("SELECT count(*) AS n FROM artifact_parents")[0]["n"] == 2


def test_run_context_hands_out_the_configured_store(tmp_path):
    local = RunContext(cfg(tmp_path))
    assert isinstance(local.judgments_db, LocalStore) and local.judgments_db.path == tmp_path / "state" / "judgments.duckdb"
    shared = RunContext(cfg(tmp_path, f"ducklake:{tmp_path / 'c.ducklake'}"))
    assert shared.judgments_db is shared.lineage_db and shared.judgments_db.kind == "ducklake"
    shared.judgment_cache().store([judgment("k")])
    # another "machine": its own empty state folder, the same catalog
    other = RunContext(cfg(tmp_path, f"ducklake:{tmp_path / 'c.ducklake'}", state_dir="elsewhere"))
    assert other.judgment_cache().lookup(["k"]).keys() == {"k"}
    assert not (tmp_path / "elsewhere" / "judgments.duckdb").exists()


def test_export_then_import_moves_judgments_and_lineage_and_repeats_nothing(tmp_path, capsys):
    laptop = RunContext(cfg(tmp_path))
    laptop.judgment_cache().store([judgment("a"), judgment("b")])
    laptop.lineage().record([manifest("/data/src"), manifest("/data/top", [manifest("/data/src")])])
    catalog = f"ducklake:{tmp_path / 'cluster.ducklake'}"
    args = ["--set", f"run.root={tmp_path / 'root'}", "--set", f"run.state_dir={tmp_path / 'state'}"]
    assert main(["state", "export", "--to", catalog, *args]) == 0
    assert "2 judgments (2 new), 2 artifacts (2 new)" in capsys.readouterr().out
    assert main(["state", "export", "--to", catalog, *args]) == 0
    assert "2 judgments (0 new), 2 artifacts (0 new)" in capsys.readouterr().out
    cluster = RunContext(cfg(tmp_path, catalog, state_dir="node"))
    assert cluster.judgment_cache().lookup(["a", "b"]).keys() == {"a", "b"}
    assert [r["uri"] for r in cluster.lineage().ancestry("/data/top")] == ["/data/top", "/data/src"]
    cluster.judgment_cache().store([judgment("c")])
    back = ["--set", f"run.root={tmp_path / 'root'}", "--set", f"run.state_dir={tmp_path / 'fresh'}"]
    assert main(["state", "import", "--from", catalog, *back]) == 0
    assert "3 judgments (3 new)" in capsys.readouterr().out
    assert JudgmentCache(tmp_path / "fresh" / "judgments.duckdb").count() == 3


def one_line_exit_2(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sip: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_a_store_of_a_newer_schema_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "state" / "judgments.duckdb"
    JudgmentCache(path)
    LocalStore(path).write(lambda con: con.execute("UPDATE sip_state SET schema_version = 99"))
    with pytest.raises(StateError, match="newer sip"):
        JudgmentCache(path)
    err = one_line_exit_2(["cache", "stats", "--set", f"run.state_dir={tmp_path / 'state'}"], capsys)
    assert "state schema v99" in err and str(path) in err


def test_a_file_from_another_duckdb_version_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "state" / "judgments.duckdb"
    path.parent.mkdir()
    path.write_bytes(DUCKDB_2_HEADER.ljust(3 * 4096, b"\0"))
    err = one_line_exit_2(["cache", "stats", "--set", f"run.state_dir={tmp_path / 'state'}"], capsys)
    assert "another duckdb version" in err and str(path) in err


def test_an_unreachable_catalog_is_one_line_and_never_shows_the_password(tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"postgres://sip:s3cret@127.0.0.1:{port}/sip"
    with pytest.raises(StateError, match="cannot reach the DuckLake catalog"):
        RunContext(cfg(tmp_path, uri)).check_state()
    err = one_line_exit_2(["cache", "stats", "--set", f"run.state={uri}", "--set", f"run.root={tmp_path}"], capsys)
    assert "s3cret" not in err and "cannot reach" in err


def test_an_unknown_state_location_is_refused(tmp_path):
    with pytest.raises(StateError, match="not a DuckLake catalog"):
        RunContext(cfg(tmp_path, "mysql://db/sip")).check_state()


def test_catalog_uris_become_libpq_targets_without_leaking_passwords():
    target, schema = catalog_target("postgres://sip:p%40ss@db.internal:5433/lake?schema=run1")
    assert target == "postgres:host=db.internal port=5433 user=sip password=p@ss dbname=lake" and schema == "run1"
    assert redact(f"at {target}") == "at postgres:host=db.internal port=5433 user=sip password=*** dbname=lake"
    assert redact("postgres://sip:p%40ss@db/x") == "postgres://sip:***@db/x"


def test_a_job_with_bad_state_stops_before_any_model_call(tmp_path, capsys):
    import socket

    from fake_openai import FakeOpenAI

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with FakeOpenAI() as server:
        err = one_line_exit_2(["rewrite", "--limit", "2", "--set", f"run.root={tmp_path / 'root'}",
                               "--set", f"run.state=postgres://sip@127.0.0.1:{port}/sip",
                               "--set", "rewriter.backend=openai", "--set", "rewriter.model=fake-model",
                               "--set", f"rewriter.base_url={server.base_url}"], capsys)
        assert server.requests == 0
    assert "run.state" in err and "cannot reach" in err


def test_compact_merges_a_ducklake_stores_batches_and_keeps_every_judgment(tmp_path, capsys):
    catalog = f"ducklake:{tmp_path / 'c.ducklake'}"
    cache = RunContext(cfg(tmp_path, catalog)).judgment_cache()
    for i in range(5):
        cache.store([judgment(f"k{i}")])
    files = "SELECT count(*) AS n FROM ducklake_list_files('sip', 'judgments')"
    assert cache.state.read(files)[0]["n"] == 5
    args = ["--set", f"run.state={catalog}", "--set", f"run.root={tmp_path / 'root'}",
            "--set", f"run.state_dir={tmp_path / 'state'}"]
    assert main(["state", "compact", *args]) == 0
    assert "judgments in 1 data file(s)" in capsys.readouterr().out
    assert cache.state.read(files)[0]["n"] == 1 and cache.count() == 5


@pytest.mark.parametrize("part", ["judgments", "lineage"])
def test_the_ducklake_schema_has_the_local_files_tables_and_columns(part):
    """sql/lake_*.sql repeats sql/*.sql without keys or indexes (DuckLake has none): the two must
    create the same tables with the same columns and types, or export/import would lose fields."""
    import duckdb

    from sip_core.infra import db
    from sip_core.infra.ducklake import DuckLakeStore

    def columns(ddl: str) -> list[tuple]:
        con = duckdb.connect()
        con.execute(db.sql(ddl))
        return con.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                           "ORDER BY table_name, ordinal_position").fetchall()

    assert columns(DuckLakeStore.ddl[part]) == columns(LocalStore.ddl[part])
