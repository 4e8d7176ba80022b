"""Data-stage tasks. Each passes artifact references (URI + content hash), never data frames."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.runtime import flow_run, task_run

from sip_core import artifacts
from sip_core.artifacts import Manifest, Provenance
from sip_core.config import SipConfig
from sip_core.prepare import StageEnv, filter_documents, ingest_documents, materialize_chunks


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


# Inputs include the code version, so new code never reuses an old cached result.
CACHE = INPUTS + TASK_SOURCE
OPTIONS = dict(cache_policy=CACHE, persist_result=True, retries=2, retry_delay_seconds=[2, 10],
               retry_condition_fn=transient)


def ref(m: Manifest) -> dict:
    return {"uri": m.uri, "content_hash": m.content_hash, "artifact_id": m.artifact_id, "rows": m.rows,
            "stats": m.stats}


def _env(cfg: SipConfig) -> StageEnv:
    return StageEnv(cfg, Provenance(flow_run_id=str(flow_run.id) if flow_run.id else None,
                                    task_run_id=str(task_run.id) if task_run.id else None))


def _load(parent: dict, cfg: SipConfig) -> Manifest:
    return artifacts.load_manifest(parent["uri"], cfg.run.storage_options)


@task(name="ingest-documents", **OPTIONS)
def ingest_task(cfg: SipConfig, code_version: str) -> dict:
    return ref(ingest_documents(_env(cfg)))


@task(name="filter-documents", **OPTIONS)
def filter_task(cfg: SipConfig, docs: dict, code_version: str) -> dict:
    return ref(filter_documents(_env(cfg), _load(docs, cfg)))


@task(name="materialize-chunks", **OPTIONS)
def chunk_task(cfg: SipConfig, filtered: dict, code_version: str) -> dict:
    return ref(materialize_chunks(_env(cfg), _load(filtered, cfg)))
