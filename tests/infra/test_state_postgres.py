"""run.state on a real Postgres catalog: lineage read from another machine, and a catalog written by
another duckdb/DuckLake version refused in one line before anything else runs."""

from __future__ import annotations

import duckdb
import pytest

from flows.cli import main
from sip_core.config import SipConfig
from sip_core.infra.ducklake import catalog_target, extension_dir
from sip_core.infra.run_context import RunContext
from sip_core.infra.state import StateError

try:
    from postgres_server import PostgresServer, postgres_server  # noqa: F401  (fixture)
    from test_state import judgment, manifest
except ImportError:  # tests/ imported as a package
    from tests.infra.postgres_server import PostgresServer, postgres_server  # noqa: F401
    from tests.infra.test_state import judgment, manifest

pytestmark = pytest.mark.postgres


def machine(tmp_path, state: str, name: str) -> RunContext:
    return RunContext(SipConfig.model_validate({"run": {"root": str(tmp_path / "root"), "state": state,
                                                        "state_dir": str(tmp_path / name)}}))


def test_lineage_written_on_one_machine_is_walked_from_another(tmp_path, postgres_server: PostgresServer, capsys):
    state = postgres_server.state_uri()
    src = manifest(str(tmp_path / "root" / "src"))
    top = manifest(str(tmp_path / "root" / "top"), [src])
    machine(tmp_path, state, "a").lineage().record([src, top])
    (tmp_path / "root" / "top").mkdir()  # the artifact itself is on the (shared) store
    args = ["--set", f"run.state={state}", "--set", f"run.root={tmp_path / 'root'}",
            "--set", f"run.state_dir={tmp_path / 'b'}"]
    assert main(["lineage", str(tmp_path / "root" / "top"), *args]) == 0
    out = capsys.readouterr().out
    assert f"dataset: {tmp_path / 'root' / 'top'}" in out and f"  dataset: {tmp_path / 'root' / 'src'}" in out
    # and the Parquet data is under the run's root, the catalog in Postgres
    assert list((tmp_path / "root" / "_state" / "lake").rglob("*.parquet"))


def test_a_catalog_from_another_ducklake_version_is_one_line(tmp_path, postgres_server: PostgresServer, capsys):
    schema = "lake_future"
    state = postgres_server.state_uri(schema)
    machine(tmp_path, state, "a").judgment_cache().store([judgment("k")])
    target, _ = catalog_target(state)
    con = duckdb.connect(config={"extension_directory": extension_dir(), "autoinstall_known_extensions": False})
    con.execute("LOAD postgres")
    con.execute(f"ATTACH '{target.removeprefix('postgres:')}' AS pg (TYPE postgres)")
    con.execute(f"UPDATE pg.{schema}.ducklake_metadata SET value = '9.9' WHERE key = 'version'")
    con.close()
    # another machine (this process keeps its attached catalog per root, so name another root)
    fresh = SipConfig.model_validate({"run": {"root": str(tmp_path / "root-b"), "state": state,
                                              "state_dir": str(tmp_path / "other")}})
    with pytest.raises(StateError, match="another duckdb/DuckLake version"):
        RunContext(fresh).check_state()
    assert main(["cache", "stats", "--set", f"run.state={state}", "--set", f"run.root={tmp_path / 'root-c'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "another duckdb/DuckLake version" in err and "\n" not in err
