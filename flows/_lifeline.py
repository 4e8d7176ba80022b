"""Processes a `sip` command starts end with it, even after `kill -9` (which runs no atexit hook).

- Prefect's temporary API server (a uvicorn child, ~250 MB): a small watchdog process holds a pipe
  from this process; when the pipe closes (this process is gone, however it ended) it stops the
  server. Prefect may start the server from any thread, so a parent-death signal, which follows
  the forking *thread*, could kill it early; the pipe follows the process.
- Recipe subprocesses (tasks/train.py): `tasks.runs.die_with_parent` as their preexec_fn asks Linux
  for SIGTERM when the (task) thread that started them ends; that thread waits for them, so it
  ends only when they do, or when the process dies.
"""

from __future__ import annotations

import subprocess
import sys

_WATCHDOG = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
pid = int(sys.argv[1])
sys.stdin.buffer.read()  # returns at EOF: the parent has exited or been killed


def alive():
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"uvicorn" in f.read()  # a zombie's is empty; a reused pid is someone else
    except OSError:
        return False


if alive():
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        if not alive():
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
"""

_watchdogs: list[subprocess.Popen] = []  # referenced for the process's life: their stdin is the lifeline


def guard(pid: int) -> None:
    """Stop process `pid` (a uvicorn server) once this process is gone."""
    if not sys.platform.startswith("linux"):
        return
    _watchdogs.append(subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(pid)], stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True))


def install() -> None:
    """Guard every temporary Prefect server this process starts (idempotent)."""
    from prefect.server.api.server import SubprocessASGIServer

    start = SubprocessASGIServer._run_uvicorn_command
    if getattr(start, "_sip_guarded", False):
        return

    def run_guarded(self):
        proc = start(self)
        guard(proc.pid)
        return proc

    run_guarded._sip_guarded = True
    SubprocessASGIServer._run_uvicorn_command = run_guarded
