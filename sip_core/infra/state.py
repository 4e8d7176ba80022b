"""Where the judgment cache and the lineage live (`run.state`): one interface, two kinds of store.

- `LocalStore`: one DuckDB file (the embedded default, zero setup). DuckDB lets one process hold
  a file at a time, so every use is short and other processes queue on the file lock (db.connect).
- `DuckLakeStore` (ducklake.py): a DuckLake catalog in Postgres with its data as Parquet under
  run.root; any number of processes on any number of machines read and write it at once.

Callers see `read` (a query -> rows), `write` (a function run in one transaction that commits whole
or not at all: a crash loses at most that batch) and `ensure_schema`. Writes are insert-if-absent
(see `sip_state` in sql/state.sql for why that stays exact with many writers).
"""

from __future__ import annotations

import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
import contextlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from sip_core.config.tree import ConfigError
from sip_core.infra import db

SCHEMA_VERSION = 1  # bump with a migration whenever a table of sql/*.sql changes
T = TypeVar("T")


class StateError(ConfigError):
    """run.state cannot be used (unreachable, another duckdb version, a newer schema): one line."""


def first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


class StateStore(ABC):
    """A place the judgment cache and lineage tables live. Subclasses give `connection` and `write`."""

    kind = "?"
    where = "?"
    ddl: dict[str, str] = {}  # schema part ("judgments", "lineage") -> the sql/ file that creates it

    def __str__(self) -> str:
        return self.where

    def exists(self) -> bool:
        return True

    @abstractmethod
    def connection(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        """A connection to the store, as a context manager."""

    @abstractmethod
    def write(self, fn: Callable[[duckdb.DuckDBPyConnection], T], turn: bool = True) -> T:
        """Run `fn(con)` in one transaction. `turn`: serialize with every other writer (needed for
        insert-if-absent); plain appends pass False."""

    def read(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        with self.connection() as con:
            cur = con.execute(query, params) if params is not None else con.execute(query)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def read_batches(self, query: str, rows: int = 50_000) -> Iterator[pa.Table]:
        with self.connection() as con:
            reader = con.execute(query).fetch_record_batch(rows)
            for batch in reader:
                yield pa.Table.from_batches([batch])

    def ensure_schema(self, part: str) -> None:
        """Create `part`'s tables and the sip_state row if missing; refuse a store of a newer schema."""

        def create(con: duckdb.DuckDBPyConnection) -> None:
            con.execute(db.sql("state"))
            con.execute(db.sql(self.ddl[part]))
            con.execute("INSERT INTO sip_state SELECT ?, 0, ? WHERE NOT EXISTS (SELECT 1 FROM sip_state)",
                        [SCHEMA_VERSION, f"sip duckdb {duckdb.__version__}"])

        if not self._has_tables(part):
            self.write(create, turn=False)
        found = self.read("SELECT max(schema_version) AS v FROM sip_state")[0]["v"]
        if found is not None and found > SCHEMA_VERSION:
            raise StateError(f"run.state {self.where}: written by a newer sip (state schema v{found}; this sip "
                             f"reads up to v{SCHEMA_VERSION}): upgrade sip on this machine")

    def _has_tables(self, part: str) -> bool:
        wanted = {"sip_state", *TABLES[part]}
        with self.connection() as con:
            names = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() "
                                               "WHERE database_name = current_database()").fetchall()}
        return wanted <= names


TABLES = {"judgments": ("judgments", "cache_lookups"), "lineage": ("artifacts", "artifact_parents")}


class LocalStore(StateStore):
    """One DuckDB file. DuckDB lets one process hold it at a time, so the file is let go soon: a burst
    of uses (a run's lookup, its batch, its counters) shares one open, which is closed once idle for
    HOLD_IDLE_S or held for HOLD_MAX_S, and other processes take their turn (db.connect retries)."""

    kind = "duckdb"
    ddl = {"judgments": "judgments", "lineage": "lineage"}
    HOLD_IDLE_S, HOLD_MAX_S = 0.05, 0.5

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.where = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._pid = self._opened = self._used = 0

    def exists(self) -> bool:
        return self.path.exists()

    @contextmanager
    def connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            con = self._acquire()
            try:
                yield con
            finally:
                self._used = time.monotonic()
                closer = threading.Timer(self.HOLD_IDLE_S, self._close_if_idle)
                closer.start()

    def _acquire(self) -> duckdb.DuckDBPyConnection:
        if self._con is not None and self._pid != os.getpid():
            self._con = None  # inherited through fork: the parent's to close, not ours
        if self._con is not None and time.monotonic() - self._opened > self.HOLD_MAX_S:
            self._close()
        if self._con is None:
            self._con, self._pid, self._opened = self._open(), os.getpid(), time.monotonic()
        return self._con

    def _open(self) -> duckdb.DuckDBPyConnection:
        try:
            return db.connect(self.path)
        except duckdb.IOException as exc:
            if "version number" in str(exc):
                raise StateError(f"run.state: {self.path} was written by another duckdb version ({first_line(exc)}); "
                                 f"this sip runs duckdb {duckdb.__version__}: move it aside, or `sip state export` "
                                 "it with the sip that wrote it") from None
            raise

    def _close_if_idle(self) -> None:
        with self._lock:
            if self._con is not None and time.monotonic() - self._used >= self.HOLD_IDLE_S * 0.9:
                self._close()

    def _close(self) -> None:
        if self._con is not None and self._pid == os.getpid():
            self._con.close()
        self._con = None

    def write(self, fn: Callable[[duckdb.DuckDBPyConnection], T], turn: bool = True) -> T:
        with self.connection() as con:  # one writer per file: the file lock is the turn
            con.execute("BEGIN")
            try:
                result = fn(con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return result


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.Error) and "conflict" in str(exc).lower()


def retry_conflicts(attempt_once: Callable[[], T], where: str, attempts: int = 60) -> T:
    """Optimistic concurrency: a transaction that lost a race is run again against the new state."""
    for attempt in range(attempts):
        try:
            return attempt_once()
        except duckdb.Error as exc:
            if not is_conflict(exc) or attempt == attempts - 1:
                raise
            time.sleep(min(1.0, 0.01 * 2 ** min(attempt, 7)) * (0.5 + random.random()))
    raise StateError(f"run.state {where}: gave up after {attempts} write conflicts")


@dataclass
class StatePlace:
    """Both parts of a run's state: judgments and lineage (one store, or two local files)."""

    judgments: StateStore
    lineage: StateStore
    where: str
    shared: bool


def is_shared(location: str | None) -> bool:
    return bool(location) and location.startswith(("postgres://", "postgresql://", "ducklake:"))


def open_state(location: str | None, state_dir: Path, root: str,
               storage_options: dict[str, Any] | None = None) -> StatePlace:
    """`location`: None (the local files in `state_dir`), a local folder of them, or a DuckLake catalog
    (postgres://user:password@host:port/db[?schema=name], or ducklake:/path/catalog.ducklake for one
    machine) whose Parquet data goes under `root`/_state/lake."""
    if is_shared(location):
        from sip_core.infra.ducklake import DuckLakeStore

        lake = DuckLakeStore.get(location, root, storage_options or {})
        return StatePlace(lake, lake, lake.where, shared=True)
    if location and "://" in location:
        raise StateError(f"run.state {location!r}: not a DuckLake catalog (postgres://user@host/db, "
                         "ducklake:/path/catalog.ducklake) or a local folder")
    folder = Path(location) if location else state_dir
    return StatePlace(LocalStore(folder / "judgments.duckdb"), LocalStore(folder / "lineage.duckdb"),
                      str(folder), shared=False)


def as_store(store: StateStore | str | Path) -> StateStore:
    """A store, or a path to a local DuckDB file (how tests and old callers name one)."""
    return store if isinstance(store, StateStore) else LocalStore(store)
