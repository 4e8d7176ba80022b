"""A real Postgres server for the shared-state tests: initdb in a temp dir, 127.0.0.1 on a free port.

Postgres refuses to run as root, so as root the server runs as the `postgres` user (the Debian
package creates it), else `nobody`. Tests skip with the reason where the binaries are absent
(`make test` installs Debian's postgresql, as `make browser` installs chromium).
Each test gets its own DuckLake metadata schema in the one server: `run.state` =
postgres://sip@127.0.0.1:PORT/postgres?schema=<fresh name>.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and no unprivileged user (postgres, nobody) to run Postgres as")


class PostgresUnavailable(RuntimeError):
    """No Postgres binaries here (or no user to run them as): the caller skips."""


@dataclass
class PostgresServer:
    port: int

    def state_uri(self, schema: str | None = None) -> str:
        """A run.state URI in this server with its own DuckLake metadata schema."""
        return f"postgres://sip@127.0.0.1:{self.port}/postgres?schema={schema or 'lake_' + uuid.uuid4().hex[:10]}"


@contextmanager
def local_postgres() -> Iterator[PostgresServer]:
    """initdb + postgres in a fresh temp dir on a free 127.0.0.1 port; removed afterwards."""
    initdb, server = _binary("initdb"), _binary("postgres")
    if not (initdb and server):
        raise PostgresUnavailable("Postgres binaries not found (apt-get install postgresql, or `make postgres`)")
    user = _run_as()
    home = tempfile.mkdtemp(prefix="sip-pg-")
    if user:
        shutil.chown(home, user)
    data, port, log = os.path.join(home, "data"), _free_port(), os.path.join(home, "log")
    subprocess.run([initdb, "-D", data, "-A", "trust", "-U", "sip", "--no-sync"], check=True, user=user,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen([server, "-D", data, "-p", str(port), "-k", home, "-c", "listen_addresses=127.0.0.1",
                                 "-c", "fsync=off", "-c", "max_connections=200"], user=user,
                                stdout=subprocess.DEVNULL, stderr=log_fh)
    try:
        deadline = time.monotonic() + 60
        while not _ready(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Postgres did not start on 127.0.0.1:{port}: {open(log).read()[-2000:]}")
            time.sleep(0.1)
        yield PostgresServer(port)
    finally:
        proc.send_signal(signal.SIGINT)  # fast shutdown: do not wait for clients still connected
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        with local_postgres() as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


def _ready(port: int) -> bool:
    """Accepting connections and past recovery: a real login, not just an open port."""
    import duckdb

    from sip_core.infra.ducklake import extension_dir

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        con = duckdb.connect(config={"extension_directory": extension_dir(), "autoinstall_known_extensions": False})
        con.execute("LOAD postgres")
        con.execute(f"ATTACH 'host=127.0.0.1 port={port} user=sip dbname=postgres' AS pg (TYPE postgres)")
        con.close()
        return True
    except Exception:
        return False
