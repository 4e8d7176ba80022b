"""What every task adds to the library call it wraps: Prefect's run ids, and which failures retry."""

from __future__ import annotations

from prefect.runtime import flow_run, task_run

from sip_core.config import SipConfig
from sip_core.infra.artifacts import Provenance
from sip_core.infra.run_context import RunContext


def provenance() -> Provenance:
    """This flow run's and task run's ids, recorded in every manifest the task writes."""
    return Provenance(str(flow_run.id) if flow_run.id else None, str(task_run.id) if task_run.id else None)


def run_context(cfg: SipConfig) -> RunContext:
    return RunContext(cfg, provenance())


def transient(task, task_run, state) -> bool:
    """Retry I/O hiccups (an object store, a network filesystem); bad input fails at once."""
    try:
        state.result()
    except FileNotFoundError:
        return False
    except (OSError, TimeoutError):
        return True
    except Exception:
        return False
    return False
