"""Sharded stages: one result per input shard, computed by any process, committed once.

A shard's result is `{"index", "parts", "stats"}`: the input shard's position, the records of the
parts it wrote (`infra.writer.ShardWriter`: URIs, hashes, rows) and its stats; references, no
rows, so results cross process and task boundaries cheaply. Files are listed partition by
partition in input order, so each partition reads back in the same row order as an unsharded pass.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pyarrow as pa
from tqdm.auto import tqdm

from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import Manifest, WriteContext

log = logging.getLogger("sip.prepare")


def complete(shards: list[dict], inputs: list[str], uri: str, storage_options: dict[str, Any], stage: str,
             run_one: Callable[[int, str], dict], threads: int = 1) -> list[dict]:
    """One result per input shard, in input order: the given ones whose parts are all present
    under `uri`, and the rest computed here (`run_one(index, shard_uri)`, on `threads` threads)."""
    present = store.files_under(uri, storage_options)
    given = {r["index"]: r for r in shards if all(p["uri"] in present for p in r["parts"])}
    missing = [i for i in range(len(inputs)) if i not in given]
    if shards and missing:
        log.info("%s: %d of %d shards have no usable parts; computing them here", stage, len(missing), len(inputs))
    threads = min(threads, len(missing))
    pool = ThreadPoolExecutor(threads, thread_name_prefix=stage) if threads > 1 else None
    try:  # results in input order; the first error is raised and the shards not yet started are dropped
        results = (pool.map if pool else map)(lambda i: run_one(i, inputs[i]), missing)
        for i, result in zip(missing, tqdm(results, desc=stage, unit="shard", total=len(missing),
                                           disable=None if len(missing) > 1 else True)):
            given[i] = result
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return [given[i] for i in range(len(inputs))]


def commit_parts(uri: str, ctx: WriteContext, schema: pa.Schema, results: list[dict],
                 partitions: tuple[str, ...], stats: dict[str, Any]) -> Manifest:
    """Commit the parts of per-shard results as one dataset (`artifacts.commit_dataset`, as
    `DatasetWriter.commit` does): files partition by partition, each in shard order. Files under
    `uri` that no result names (a crashed earlier try) are removed first."""
    order = {p: n for n, p in enumerate(partitions)}
    parts = sorted(((p, r["index"]) for r in results for p in r["parts"]),
                   key=lambda pi: (order.get(pi[0]["partition"], len(order)), pi[0]["partition"], pi[1], pi[0]["k"]))
    parts = [p for p, _ in parts]
    for stale in store.files_under(uri, ctx.storage_options) - {p["uri"] for p in parts}:
        store.remove_file(stale, ctx.storage_options)
    shards = [artifacts.shard_manifest(ctx, p, schema) for p in parts]
    return artifacts.commit_dataset(uri, ctx, shards, schema, stats)
