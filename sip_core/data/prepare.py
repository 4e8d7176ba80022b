"""The data stage as three plain functions: ingest -> filter -> chunk (+ doc-level split).

Each takes its parent's manifest and returns the manifest of what it wrote. Outputs are
content-addressed (`<root>/prepare/<stage>-<key>`, key = parents + config + code), so a stage whose
committed output already exists is not recomputed, and a changed input or config writes elsewhere.

Filter and chunk work shard by shard: `filter_shard` / `chunk_shard` read one input shard and write
their own parts (`<partition>/part-<shard>-<k>.parquet`, each written atomically, so many processes
can write one dataset at once) and return only the parts' URIs, hashes and row counts plus their
stats; `filter_documents` / `materialize_chunks` commit the parts into the one dataset manifest
(merged stats, `_manifest.json` last). Called without parts they run every shard in this process.
Files are listed partition by partition in input order, so each partition reads back in the same
row order as an unsharded pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import DatasetWriter, Manifest, Provenance, WriteContext
from sip_core.data.chunking import CHUNK_SCHEMA, make_chunks, tokenizer_fingerprint
from sip_core.config import SipConfig, resolve_wordlists
from sip_core.data.documents import Document
from sip_core.data.rule_filters import (BulletLinesFilter, FilterStats, MeanWordLengthFilter, RuleStage, SymbolWordRatioFilter,
                              Top2GramFilter, UnsafeRule, Verdict, WordCountFilter, run_stages)
from sip_core.infra.models import load_tokenizer
from sip_core.infra.run_context import RunContext
from sip_core.data.signals import Lexicons
from sip_core.data.readers import SourceError, iter_documents, resolve_source

log = logging.getLogger("sip.prepare")

DOC_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string()),
                        ("meta_json", pa.string())])
FILTERED_SCHEMA = pa.schema([*DOC_SCHEMA, ("label", pa.string()), ("reason", pa.string()),
                             ("stage", pa.string()), ("signals_json", pa.string())])
INGEST_KEYS = ("source", "hf_config", "hf_split", "text_field", "id_field", "max_docs")


def _reuse(env: RunContext, uri: str, stage: str) -> Manifest | None:
    done = artifacts.load_committed(uri, env.storage_options)
    if done is not None:
        log.info("%s: reusing committed output %s", stage, uri)
    return done


def ingest_documents(env: RunContext) -> Manifest:
    """Source -> normalised documents, with bad records skipped and counted by reason."""
    data = env.cfg.data
    src = resolve_source(data, env.storage_options)
    source = artifacts.source_manifest(src.uris(), {"source": data.source}, env.storage_options)
    config = {k: getattr(data, k) for k in INGEST_KEYS}
    uri = env.stage_uri("docs", source.content_hash, config)
    if done := _reuse(env, uri, "ingest"):
        return done
    skips: Counter = Counter()
    rows: list[dict] = []
    n_docs = 0
    with DatasetWriter(uri, env.context(config, [source]), shard_rows=data.shard_rows, schema=DOC_SCHEMA) as writer:
        for doc in tqdm(iter_documents(src, data, skips, env.storage_options), desc="ingest", unit="doc",
                        total=data.max_docs, disable=None):
            rows.append({"doc_id": doc.id, "source": doc.source, "text": doc.text,
                         "meta_json": json.dumps(doc.meta, sort_keys=True, default=str)})
            n_docs += 1
            if len(rows) >= data.shard_rows:
                writer.write(pa.Table.from_pylist(rows, schema=DOC_SCHEMA))
                rows = []
        if rows:
            writer.write(pa.Table.from_pylist(rows, schema=DOC_SCHEMA))
        if n_docs == 0:
            raise SourceError(f"data.source {data.source!r}: no usable documents (skipped: {dict(skips) or 'none'})")
        return writer.commit({"documents": n_docs, "skipped": dict(skips)})


def read_documents(manifest: Manifest, storage_options: dict[str, Any] | None = None,
                   partition: str | None = None) -> Iterator[tuple[Document, dict]]:
    """Documents of a docs/filtered dataset, each with its full record (label, reason, ...)."""
    for shard in artifacts.shard_uris(manifest, partition):
        for rec in store.read_parquet(shard, storage_options).to_pylist():
            yield Document(id=rec["doc_id"], text=rec["text"], source=rec["source"],
                           meta=json.loads(rec["meta_json"])), rec


def build_rule_stage(env: RunContext) -> RuleStage:
    f = env.cfg.filter
    lexicons = Lexicons.load(resolve_wordlists(f), f.url_blocklist)
    quality = [WordCountFilter(f.min_words, f.max_words), MeanWordLengthFilter(f.min_mean_word_length,
               f.max_mean_word_length), SymbolWordRatioFilter(f.max_symbol_word_ratio),
               BulletLinesFilter(f.max_bullet_lines), Top2GramFilter(f.max_top_2gram)]
    return RuleStage(lexicons, quality, UnsafeRule(f.min_badwords, f.combine))


def _filter_stages(env: RunContext, stages: list | None) -> list:
    return stages or [build_rule_stage(env)]


def filter_plan(env: RunContext, docs_hash: str, stages: list) -> tuple[str, dict[str, Any]]:
    """Output URI and config of the filter stage over the docs dataset with content hash `docs_hash`."""
    config = {"filter": env.cfg.filter.model_dump(mode="json"), "stages": [s.name for s in stages]}
    return env.stage_uri("filtered", docs_hash, config), config


FILTER_PARTITIONS = ("unsafe", "rest", "excluded")


def label_documents(table: pa.Table, stages: list) -> tuple[pa.Table, dict[str, Any]]:
    """A docs table through the filter stages: its own columns plus the verdict columns (label,
    reason, stage, signals_json), rows in input order, and the verdicts' counts."""
    docs = [Document(id=doc_id, text=text, source=source, meta=json.loads(meta)) for doc_id, text, source, meta
            in zip(*(table[c].to_pylist() for c in ("doc_id", "text", "source", "meta_json")))]
    stats = FilterStats()
    verdicts: list[Verdict | None] = [None] * len(docs)
    position = {id(doc): i for i, doc in enumerate(docs)}
    for doc, verdict in run_stages(stages, iter(docs)):
        stats.update(verdict)
        verdicts[position[id(doc)]] = verdict  # stages yield the docs they get, a batching one maybe reordered
    # The documents' own columns are the input's (no round trip of every text through Python objects).
    out = table.select(DOC_SCHEMA.names)
    for name, values in (("label", [v.label for v in verdicts]), ("reason", [v.reason for v in verdicts]),
                         ("stage", [v.stage for v in verdicts]),
                         ("signals_json", [json.dumps(d.signals, sort_keys=True) for d in docs])):
        out = out.append_column(name, pa.array(values, pa.string()))
    return out, stats.as_dict()


def filter_shard(env: RunContext, docs_hash: str, index: int, shard_uri: str, stages: list | None = None,
                 parallel: bool = True) -> dict[str, Any]:
    """One docs shard through the filter stages into the filtered dataset's (uncommitted) parts
    `<label>/part-<index>-<k>.parquet`. Returns {"index", "parts", "stats"}: references, no rows.
    `parallel`: label a big enough shard of the rules alone in a worker process (`rule_pool`; off
    under Ray, whose workers already fill the cores). Reads and writes stay in this process."""
    stages = _filter_stages(env, stages)
    uri, _ = filter_plan(env, docs_hash, stages)
    table = store.read_parquet(shard_uri, env.storage_options)
    pool = rule_pool() if parallel and table.num_rows >= PARALLEL_RULES_MIN_DOCS and _pure(stages) else None
    if pool is None:
        out, stats = label_documents(table, stages)
    else:
        try:
            out, stats = pool.submit(label_documents, table, stages).result()
        except BrokenProcessPool:  # a worker died (killed, out of memory): the next try gets a new pool
            close_rule_pool()
            raise
    with PartWriter(uri, index, env, FILTERED_SCHEMA) as writer:
        for label in FILTER_PARTITIONS:
            part = out.filter(pc.equal(out["label"], label))
            if part.num_rows:
                writer.write(part, label)
        return {"index": index, "parts": writer.close(), "stats": stats}


def filter_documents(env: RunContext, docs: Manifest, stages: list | None = None,
                     shards: list[dict] | None = None) -> Manifest:
    """Documents -> partitions `unsafe/` (likely-unsafe candidates), `rest/`, `excluded/` (a quality
    rule failed; the reason says which). Later stages (the LLM confirmation) are passed in `stages`.

    `shards`: `filter_shard` results already computed (by mapped tasks); a shard without a usable
    result is filtered here. Then the parts are committed as one dataset."""
    stages = _filter_stages(env, stages)
    uri, config = filter_plan(env, docs.content_hash, stages)
    if done := _reuse(env, uri, "filter"):
        return done
    inputs = artifacts.shard_uris(docs)
    if shards is None:
        store.remove_tree(uri, env.storage_options)  # an uncommitted leftover is never trusted
    # Rules-only shards run side by side, one per worker process, so every core labels documents.
    threads = _rule_workers() if _pure(stages) else 1
    try:
        results = _complete(shards or [], inputs, uri, env, "filter",
                            lambda i, shard: filter_shard(env, docs.content_hash, i, shard, stages), threads)
    finally:
        close_rule_pool()
    stats = FilterStats()
    for r in results:  # in shard order: the same counts, and keys in the same order, as one pass
        stats.labels.update(r["stats"]["labels"])
        stats.reasons.update(r["stats"]["reasons"])
    return commit_parts(uri, env.context(config, [docs]), FILTERED_SCHEMA, results, FILTER_PARTITIONS,
                        stats.as_dict())


# Below this many documents the rules take ~0.1 s: not worth a worker process. A flow maps shards
# of ~2,000 documents onto threads, each shard labelled in a worker process.
PARALLEL_RULES_MIN_DOCS = 512


def _pure(stages: list) -> bool:
    """Stages that can run in a forked worker: the rule stage alone (no LLM client, no judgment cache)."""
    return all(type(s) is RuleStage for s in stages)


def _rule_workers() -> int:
    """Worker processes for rule labelling: one per core, or 0 to label in this process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    usable = "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon
    return cores if usable and cores > 1 else 0


_RULE_POOL: ProcessPoolExecutor | None = None
_RULE_POOL_LOCK = threading.Lock()


def rule_pool() -> ProcessPoolExecutor | None:
    """This process's pool of rule workers (created on first use, kept until `close_rule_pool`), or
    None on one core or without fork.

    The rules are pure Python (~0.3 ms a document), so under the GIL they use one core; shards from
    any thread of this process share the pool, so its workers stay busy across shard boundaries.
    fork: a worker starts in milliseconds and never re-runs the caller's __main__ (spawn does: an
    unguarded script would hang). Workers only compute: tables and stages in, tables out."""
    global _RULE_POOL
    workers = _rule_workers()
    if not workers:
        return None
    with _RULE_POOL_LOCK:
        if _RULE_POOL is None:
            _RULE_POOL = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
        return _RULE_POOL


def close_rule_pool() -> None:
    """Stop the rule workers (the filter stage calls this when it commits)."""
    global _RULE_POOL
    with _RULE_POOL_LOCK:
        pool, _RULE_POOL = _RULE_POOL, None
    if pool is not None:
        pool.shutdown()


_TOKENIZERS: dict[tuple, tuple] = {}  # (policy, cache dir) -> (tokenizer, fingerprint), per process
_TOKENIZER_LOAD = threading.Lock()
# One chunk shard at a time per process encodes; shards mapped onto threads queue here. The Rust
# tokenizer already spreads each batch over every core, so concurrent shards only contend for the
# GIL, and the one tokenizer a process loads is never used by two threads at once (a fast
# tokenizer is not thread-safe).
_CHUNK_TURN = threading.Lock()


def _tokenizer(env: RunContext):
    model = env.cfg.model
    key = (model.policy, model.cache_dir)
    with _TOKENIZER_LOAD:  # also: a first `import transformers` in two threads at once can fail
        if key not in _TOKENIZERS:
            tokenizer = load_tokenizer(model.policy, model.cache_dir)
            _TOKENIZERS[key] = tokenizer, tokenizer_fingerprint(tokenizer)
        return _TOKENIZERS[key]


def chunk_plan(env: RunContext, filtered_hash: str, fingerprint: str) -> tuple[str, dict[str, Any]]:
    """Output URI and config of the chunk stage over the filtered dataset `filtered_hash`."""
    data, model = env.cfg.data, env.cfg.model
    config = {"data": data.model_dump(mode="json", exclude=set(INGEST_KEYS)), "policy": model.policy,
              "tokenizer": fingerprint, "chunk_excluded": env.cfg.filter.chunk_excluded}
    return env.stage_uri("chunks", filtered_hash, config), config


def chunk_inputs(env: RunContext, filtered: Manifest) -> list[str]:
    """The filtered shards that are chunked, in the order an unsharded pass reads them."""
    partitions = ["unsafe", "rest"] + (["excluded"] if env.cfg.filter.chunk_excluded else [])
    return [f for p in partitions for f in artifacts.shard_uris(filtered, p)]


CHUNK_PARTITIONS = ("train", "heldout")


def chunk_shard(env: RunContext, filtered_hash: str, index: int, shard_uri: str) -> dict[str, Any]:
    """One filtered shard -> chunks in the chunk dataset's (uncommitted) parts
    `<split>/part-<index>-<k>.parquet`. Returns {"index", "parts", "stats"}: references, no rows."""
    data = env.cfg.data
    tokenizer, fingerprint = _tokenizer(env)
    uri, _ = chunk_plan(env, filtered_hash, fingerprint)
    # Only the columns chunking uses: no meta or signals JSON to convert and parse.
    columns = ["doc_id", "source", "text", "label", "reason"]
    table = store.read_parquet(shard_uri, env.storage_options, columns=columns)
    docs = ((Document(id=doc_id, text=text, source=source), label, reason)
            for doc_id, source, text, label, reason in zip(*(table[c].to_pylist() for c in columns)))
    skips: Counter = Counter()
    counts: Counter = Counter()
    with _CHUNK_TURN, PartWriter(uri, index, env, CHUNK_SCHEMA) as writer:
        for chunks in make_chunks(docs, tokenizer, data, fingerprint, skips):
            for split in CHUNK_PARTITIONS:
                part = chunks.filter(pc.equal(chunks["split"], split))
                if part.num_rows:
                    writer.write(part, split)
                    counts[split] += part.num_rows
        return {"index": index, "parts": writer.close(),
                "stats": {"chunks": dict(counts), "skipped": dict(skips)}}


def materialize_chunks(env: RunContext, filtered: Manifest, shards: list[dict] | None = None) -> Manifest:
    """Filtered documents -> chunks in `train/` and `heldout/` (split by document).

    `shards`: `chunk_shard` results already computed (by mapped tasks); a shard without a usable
    result is chunked here. Then the parts are committed as one dataset."""
    tokenizer, fingerprint = _tokenizer(env)
    uri, config = chunk_plan(env, filtered.content_hash, fingerprint)
    if done := _reuse(env, uri, "chunk"):
        return done
    if shards is None:
        store.remove_tree(uri, env.storage_options)  # an uncommitted leftover is never trusted
    results = _complete(shards or [], chunk_inputs(env, filtered), uri, env, "chunk",
                        lambda i, shard: chunk_shard(env, filtered.content_hash, i, shard))
    counts: Counter = Counter()
    skips: Counter = Counter()
    for r in results:
        counts.update(r["stats"]["chunks"])
        skips.update(r["stats"]["skipped"])
    return commit_parts(uri, env.context(config, [filtered]), CHUNK_SCHEMA, results, CHUNK_PARTITIONS,
                        {"chunks": dict(counts), "skipped": dict(skips), "tokenizer": fingerprint,
                         "suffix_tokens": env.cfg.data.suffix_tokens})


# ---------------------------------------------------------------------------------------------
# Sharded writes: parts written by any process, committed once


def part_name(index: int, k: int) -> str:
    return f"part-{index:05d}-{k:05d}.parquet"


class PartWriter:
    """Rows of one input shard -> parts `<uri>/<partition>/part-<index>-<k>.parquet` of an uncommitted
    dataset, each at most `data.shard_rows` rows and written atomically. The names are the shard's
    own, so shards write side by side and a retried shard overwrites its earlier try. On an error
    the shard's parts are removed."""

    def __init__(self, uri: str, index: int, env: RunContext, schema: pa.Schema):
        self.uri, self.index, self.env, self.schema = uri, index, env, schema
        self.limit = env.cfg.data.shard_rows
        self._tables: dict[str, list[pa.Table]] = {}
        self._buffered: dict[str, int] = {}
        self._counts: dict[str, int] = {}
        self.parts: list[dict[str, Any]] = []

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            for part in self.parts:
                fs, path = store.filesystem(part["uri"], self.env.storage_options)
                if fs.exists(path):
                    fs.rm(path)

    def write(self, table: pa.Table, partition: str) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        self._tables.setdefault(partition, []).append(table)
        self._buffered[partition] = self._buffered.get(partition, 0) + table.num_rows
        while self._buffered[partition] >= self.limit:
            self._flush(partition, self.limit)

    def _flush(self, partition: str, limit: int) -> None:
        whole = pa.concat_tables(self._tables.pop(partition))
        head, tail = whole.slice(0, limit), whole.slice(limit)
        self._tables[partition] = [tail] if tail.num_rows else []
        self._buffered[partition] = tail.num_rows
        k = self._counts.get(partition, 0)
        self._counts[partition] = k + 1
        uri = store.join(self.uri, partition, part_name(self.index, k))
        data = store.parquet_bytes(head.combine_chunks())
        store.write_bytes(uri, data, self.env.storage_options)
        self.parts.append({"uri": uri, "partition": partition, "k": k, "rows": head.num_rows,
                           "content_hash": hashlib.sha256(data).hexdigest(),
                           "task_run_id": self.env.provenance.task_run_id})

    def close(self) -> list[dict[str, Any]]:
        for partition in list(self._tables):
            if self._buffered.get(partition):
                self._flush(partition, self._buffered[partition])
        return self.parts


def _complete(shards: list[dict], inputs: list[str], uri: str, env: RunContext, stage: str,
              run_one, threads: int = 1) -> list[dict]:
    """One result per input shard, in input order: the given ones whose parts are all present
    under `uri`, and the rest computed here (`run_one(index, shard_uri)`, on `threads` threads)."""
    present = _files_under(uri, env.storage_options)
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


def _files_under(uri: str, storage_options: dict[str, Any]) -> set[str]:
    fs, path = store.filesystem(uri, storage_options)
    if not fs.exists(path):
        return set()
    base = store.normalize(uri)
    return {store.join(base, f[len(path.rstrip("/")) + 1:]) for f in fs.find(path)}


def commit_parts(uri: str, ctx: WriteContext, schema: pa.Schema, results: list[dict],
                 partitions: tuple[str, ...], stats: dict[str, Any]) -> Manifest:
    """Commit the parts of per-shard results as one dataset (`artifacts.commit_dataset`, as
    `DatasetWriter.commit` does): files partition by partition, each in shard order. Files under
    `uri` that no result names (a crashed earlier try) go first."""
    order = {p: n for n, p in enumerate(partitions)}
    parts = sorted(((p, r["index"]) for r in results for p in r["parts"]),
                   key=lambda pi: (order.get(pi[0]["partition"], len(order)), pi[0]["partition"], pi[1], pi[0]["k"]))
    parts = [p for p, _ in parts]
    keep = {p["uri"] for p in parts}
    fs, _ = store.filesystem(uri, ctx.storage_options)
    for stale in _files_under(uri, ctx.storage_options) - keep:
        fs.rm(store.filesystem(stale, ctx.storage_options)[1])
    shards = [artifacts.new_manifest(ctx, p["uri"], "parquet-shard", p["content_hash"], p["rows"], schema,
                                      task_run_id=p.get("task_run_id")) for p in parts]
    return artifacts.commit_dataset(uri, ctx, shards, schema, stats)
