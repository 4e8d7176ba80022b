"""`sip state export|import`: move a run's judgments and lineage between state stores.

    sip state export --to postgres://sip@db:5432/sip -c laptop.yaml    # this run's state -> the cluster's
    sip state import --from ~/old-run/_state -c cluster.yaml            # a local state folder -> this run's
    sip state compact -c cluster.yaml                                   # merge a DuckLake store's small files

This run's state is what its config's run.state names (its local files when unset). The other side
is a local state folder (judgments.duckdb + lineage.duckdb) or a DuckLake catalog URI; a new
catalog keeps its data under this run's root.
"""

from __future__ import annotations


def _places(args):
    from sip_core.infra.run_context import RunContext
    from sip_core.infra.state import open_state

    from flows.cli import _load

    ctx = RunContext(_load(args))
    other = args.to if args.state_command == "export" else args.source
    return ctx.state(), open_state(other, ctx.state_dir, ctx.root, ctx.storage_options)


def cmd_state_copy(args) -> int:
    from sip_core.infra.state_transfer import copy_state

    mine, other = _places(args)
    source, target = (mine, other) if args.state_command == "export" else (other, mine)
    if not source.shared and not source.judgments.exists():
        raise FileNotFoundError(f"state {args.state_command}: no state at {source.where} (no judgments.duckdb there)")
    copied = copy_state(source, target)
    print(f"state {args.state_command}: {copied.line(source.where, target.where)}")
    return 0


def cmd_state_compact(args) -> int:
    from sip_core.infra.run_context import RunContext

    from flows.cli import _load

    place = RunContext(_load(args)).state()
    if not place.shared:
        print(f"state compact: {place.where} is a local DuckDB file; nothing to compact")
        return 0
    place.judgments.compact()
    files = place.judgments.read("SELECT count(*) AS n FROM ducklake_list_files('sip', 'judgments')")[0]["n"]
    print(f"state compact: {place.where}: judgments in {files} data file(s); snapshots older than a day expired")
    return 0


def add_commands(sub) -> None:
    from flows.cli import _command, arg

    state = sub.add_parser("state", help="move judgments and lineage between state stores").add_subparsers(
        dest="state_command", required=True)
    _command(state, "export", "copy this run's judgments and lineage into another store", cmd_state_copy,
             arg("--to", required=True, help="a DuckLake catalog (postgres://user@host/db) or a local state folder"))
    _command(state, "import", "copy another store's judgments and lineage into this run's state", cmd_state_copy,
             arg("--from", dest="source", required=True,
                 help="a local state folder (judgments.duckdb, lineage.duckdb) or a DuckLake catalog"))
    _command(state, "compact", "merge a DuckLake store's small files and expire old snapshots", cmd_state_compact)
