"""prepare: source documents -> rule filter -> (prefix, suffix) chunks split by document."""

from __future__ import annotations

from prefect import flow

from flows._common import run_cached
from sip_core.config import SipConfig
from tasks.prepare import chunk_task, filter_task, ingest_task


@flow(name="prepare", log_prints=True)
def prepare(config: SipConfig = SipConfig()) -> dict:
    docs = run_cached(ingest_task, config)
    filtered = run_cached(filter_task, config, docs)
    chunks = run_cached(chunk_task, config, filtered)
    return {"docs": docs, "filtered": filtered, "chunks": chunks}
