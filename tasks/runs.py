"""What every task adds to the library call it wraps: Prefect's run ids, and which failures retry."""

from __future__ import annotations

import errno
import signal
import sys

from prefect.runtime import flow_run, task_run

from sip_core.config import SipConfig
from sip_core.infra.artifacts import Provenance
from sip_core.infra.run_context import RunContext


def provenance() -> Provenance:
    """This flow run's and task run's ids, recorded in every manifest the task writes."""
    return Provenance(str(flow_run.id) if flow_run.id else None, str(task_run.id) if task_run.id else None)


def run_context(cfg: SipConfig) -> RunContext:
    return RunContext(cfg, provenance())


# OS errors a retry can outlive: a dropped or refused connection, a timeout, a stale NFS handle.
TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                    errno.ENETUNREACH, errno.ENETDOWN, errno.EAGAIN, errno.EPIPE, errno.EIO, errno.ESTALE}
# Network errors of the HTTP clients the stores and the Hub use, by name (no import of each client).
TRANSIENT_NAMES = {"ConnectError", "ConnectTimeout", "ReadTimeout", "ReadError", "RemoteProtocolError", "PoolTimeout",
                   "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ServerDisconnectedError",
                   "ClientConnectionError", "ClientOSError", "ClientPayloadError"}


def is_transient(exc: BaseException, depth: int = 0) -> bool:
    """An I/O hiccup worth a retry. Never a missing or forbidden file, a bad path, an unknown
    model or repo (transformers reports those as a bare OSError), or any client error."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__name__ in TRANSIENT_NAMES:
        return True
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return True
    cause = exc.__cause__ or exc.__context__
    return (cause is not None and depth < 5 and not isinstance(exc, ValueError)  # ValueError: bad input
            and is_transient(cause, depth + 1))


def transient(task, task_run, state) -> bool:
    """Retry I/O hiccups (an object store, a network filesystem); bad input fails at once."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classified, not handled
        return is_transient(exc)
    return False


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when its parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass
