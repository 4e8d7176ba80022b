"""The data stage as three plain functions: ingest -> filter -> chunk (+ doc-level split).

Each takes its parent's manifest and returns the manifest of what it wrote. Outputs are
content-addressed (`<root>/prepare/<stage>-<key>`, key = parents + config + code), so a stage whose
committed output already exists is not recomputed, and a changed input or config writes elsewhere.

Filter and chunk work shard by shard: `filter_shard` / `chunk_shard` read one input shard and write
their own parts (`<partition>/part-<shard>-<k>.parquet`, each written atomically, so many processes
can write one dataset at once) and return only the parts' URIs, hashes and row counts plus their
stats; `filter_documents` / `materialize_chunks` commit the parts into the one dataset manifest
(merged stats, `_manifest.json` last; see `data.shards`). Called without parts they run every
shard in this process. Rules-only filter shards are labelled in forked workers (`data.rule_workers`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from sip_core.config import resolve_wordlists
from sip_core.data.chunking import CHUNK_SCHEMA, make_chunks, tokenizer_fingerprint
from sip_core.data.documents import Document
from sip_core.data.readers import SourceError, iter_documents, resolve_source
from sip_core.data.rule_filters import (BulletLinesFilter, FilterStats, MeanWordLengthFilter, RuleStage,
                                        SymbolWordRatioFilter, Top2GramFilter, UnsafeRule, Verdict, WordCountFilter,
                                        run_stages)
from sip_core.data.rule_workers import close_rule_pool, forkable, rule_pool
from sip_core.data.rule_workers import worker_count as _rule_workers
from sip_core.data.shards import commit_parts, complete
from sip_core.data.signals import Lexicons
from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import DatasetWriter, Manifest
from sip_core.infra.models import load_tokenizer
from sip_core.infra.run_context import RunContext
from sip_core.infra.writer import ShardWriter

log = logging.getLogger("sip.prepare")

DOC_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string()),
                        ("meta_json", pa.string())])
FILTERED_SCHEMA = pa.schema([*DOC_SCHEMA, ("label", pa.string()), ("reason", pa.string()),
                             ("stage", pa.string()), ("signals_json", pa.string())])
INGEST_KEYS = ("source", "hf_config", "hf_split", "text_field", "id_field", "max_docs")



def _part_writer(env: RunContext, uri: str, index: int, schema: pa.Schema) -> ShardWriter:
    """The writer of input shard `index`'s parts of the (uncommitted) dataset at `uri`."""
    return ShardWriter(uri, env.storage_options, env.cfg.data.shard_rows, schema, index=index,
                       task_run_id=env.provenance.task_run_id)


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
    pool = rule_pool() if parallel and table.num_rows >= PARALLEL_RULES_MIN_DOCS and forkable(stages) else None
    if pool is None:
        out, stats = label_documents(table, stages)
    else:
        try:
            out, stats = pool.submit(label_documents, table, stages).result()
        except BrokenProcessPool:  # a worker died (killed, out of memory): the next try gets a new pool
            close_rule_pool()
            raise
    with _part_writer(env, uri, index, FILTERED_SCHEMA) as writer:
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
    threads = _rule_workers() if forkable(stages) else 1
    try:
        results = complete(shards or [], inputs, uri, env.storage_options, "filter",
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
              "tokenizer": fingerprint, "chunk_excluded": env.cfg.filter.chunk_excluded,
              "llm_stage": stage_two_identity(env.cfg)}
    return env.stage_uri("chunks", filtered_hash, config), config




def stage_two_identity(cfg) -> dict | None:
    """What filter stage 2's labels depend on (part of the chunk stage's key), None when it is off."""
    if not cfg.filter.llm_stage:
        return None
    return {"judge": cfg.judge.model_dump(mode="json", exclude={"api_key_block"}), "prompt": "safety",
            "seeds": cfg.judge.safety_stage_seeds, "splits": list(cfg.filter.llm_stage_splits)}


def _stage_two(env: RunContext):
    """Filter stage 2 on chunk prefixes (METHOD §2.3), or None when `filter.llm_stage` is off."""
    cfg = env.cfg
    if not cfg.filter.llm_stage:
        return None
    from sip_core.data.llm_safety_filter import LLMSafetyStage
    from sip_core.llm.factory import open_llm

    return LLMSafetyStage(lambda: open_llm(cfg, "judge", env.provenance), cfg.judge.safety_stage_seeds,
                          cfg.judge.parse_retries, prefill=cfg.judge.prefill, splits=cfg.filter.llm_stage_splits)


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
    stage_two = _stage_two(env)
    with _CHUNK_TURN, _part_writer(env, uri, index, CHUNK_SCHEMA) as writer:
        tables = list(make_chunks(docs, tokenizer, data, fingerprint, skips))
        stage_two_stats = None
        if stage_two is not None and tables:  # judged before anything is written: a failure commits nothing
            table, stage_two_stats = stage_two.confirm_chunks(pa.concat_tables(tables))
            tables = [table]
        for chunks in tables:
            for split in CHUNK_PARTITIONS:
                part = chunks.filter(pc.equal(chunks["split"], split))
                if part.num_rows:
                    writer.write(part, split)
                    counts[split] += part.num_rows
        stats = {"chunks": dict(counts), "skipped": dict(skips)}
        if stage_two_stats is not None:
            stats["llm_stage"] = stage_two_stats
        return {"index": index, "parts": writer.close(), "stats": stats}


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
    results = complete(shards or [], chunk_inputs(env, filtered), uri, env.storage_options, "chunk",
                       lambda i, shard: chunk_shard(env, filtered.content_hash, i, shard))
    counts: Counter = Counter()
    skips: Counter = Counter()
    for r in results:
        counts.update(r["stats"]["chunks"])
        skips.update(r["stats"]["skipped"])
    stats = {"chunks": dict(counts), "skipped": dict(skips), "tokenizer": fingerprint,
             "suffix_tokens": env.cfg.data.suffix_tokens}
    if env.cfg.filter.llm_stage:
        from sip_core.data.llm_safety_filter import merge_stats

        stats["llm_stage"] = merge_stats(r["stats"].get("llm_stage") for r in results)
    return commit_parts(uri, env.context(config, [filtered]), CHUNK_SCHEMA, results, CHUNK_PARTITIONS, stats)
