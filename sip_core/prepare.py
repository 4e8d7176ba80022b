"""The data stage as three plain functions: ingest -> filter -> chunk (+ doc-level split).

Each takes its parent's manifest and returns the manifest of what it wrote. Outputs are
content-addressed (`<root>/prepare/<stage>-<key>`, key = parents + config + code), so a stage whose
committed output already exists is not recomputed, and a changed input or config writes elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from sip_core import artifacts, store
from sip_core.artifacts import DatasetWriter, Manifest, Provenance, WriteContext
from sip_core.chunking import CHUNK_SCHEMA, make_chunks, tokenizer_fingerprint
from sip_core.config import SipConfig, resolve_wordlists
from sip_core.documents import Document
from sip_core.filters import (BulletLinesFilter, FilterStats, MeanWordLengthFilter, RuleStage, SymbolWordRatioFilter,
                              Top2GramFilter, UnsafeRule, UnsafeStage, Verdict, WordCountFilter, run_stages)
from sip_core.lineage import LineageDB
from sip_core.models import load_tokenizer
from sip_core.paths import state_dir_for
from sip_core.signals import Lexicons
from sip_core.sources import SourceError, iter_documents, resolve_source

log = logging.getLogger("sip.prepare")

DOC_SCHEMA = pa.schema([("doc_id", pa.string()), ("source", pa.string()), ("text", pa.string()),
                        ("meta_json", pa.string())])
FILTERED_SCHEMA = pa.schema([*DOC_SCHEMA, ("label", pa.string()), ("reason", pa.string()),
                             ("stage", pa.string()), ("signals_json", pa.string())])
INGEST_KEYS = ("source", "hf_config", "hf_split", "text_field", "id_field", "max_docs")


@dataclass
class StageEnv:
    """What every stage needs from its caller: config, provenance, and where lineage goes."""

    cfg: SipConfig
    provenance: Provenance = Provenance()

    @property
    def storage_options(self) -> dict[str, Any]:
        return self.cfg.run.storage_options

    def lineage(self) -> LineageDB:
        return LineageDB(state_dir_for(self.cfg.run.root, self.cfg.run.state_dir) / "lineage.duckdb")

    def out_uri(self, stage: str, *key_parts: Any) -> str:
        key = hashlib.sha256(json.dumps([*key_parts, artifacts.code_version()], sort_keys=True,
                                        default=str).encode()).hexdigest()[:16]
        return store.join(store.normalize(self.cfg.run.root), "prepare", f"{stage}-{key}")

    def context(self, config: dict[str, Any], parents: list[Manifest]) -> WriteContext:
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        return WriteContext(config=config, config_hash=digest, parents=parents, provenance=self.provenance,
                            storage_options=self.storage_options, lineage=self.lineage())


def _reuse(env: StageEnv, uri: str, stage: str) -> Manifest | None:
    done = artifacts.load_committed(uri, env.storage_options)
    if done is not None:
        log.info("%s: reusing committed output %s", stage, uri)
    return done


def ingest_documents(env: StageEnv) -> Manifest:
    """Source -> normalised documents, with bad records skipped and counted by reason."""
    data = env.cfg.data
    src = resolve_source(data, env.storage_options)
    source = artifacts.source_manifest(src.uris(), {"source": data.source}, env.storage_options)
    config = {k: getattr(data, k) for k in INGEST_KEYS}
    uri = env.out_uri("docs", source.content_hash, config)
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


def build_rule_stage(env: StageEnv) -> RuleStage:
    f = env.cfg.filter
    lexicons = Lexicons.load(resolve_wordlists(f), f.url_blocklist)
    quality = [WordCountFilter(f.min_words, f.max_words), MeanWordLengthFilter(f.min_mean_word_length,
               f.max_mean_word_length), SymbolWordRatioFilter(f.max_symbol_word_ratio),
               BulletLinesFilter(f.max_bullet_lines), Top2GramFilter(f.max_top_2gram)]
    return RuleStage(lexicons, quality, UnsafeRule(f.min_badwords, f.combine))


def filter_documents(env: StageEnv, docs: Manifest, stages: list | None = None) -> Manifest:
    """Documents -> partitions `unsafe/` (likely-unsafe candidates), `rest/`, `excluded/` (a quality
    rule failed; the reason says which). Later stages (the LLM confirmation) are passed in `stages`."""
    stages = stages or [build_rule_stage(env)]
    config = {"filter": env.cfg.filter.model_dump(mode="json"), "stages": [s.name for s in stages]}
    uri = env.out_uri("filtered", docs.content_hash, config)
    if done := _reuse(env, uri, "filter"):
        return done
    with DatasetWriter(uri, env.context(config, [docs]), shard_rows=env.cfg.data.shard_rows,
                       schema=FILTERED_SCHEMA) as writer:
        return _write_filtered(writer, stages, docs, env)


def _write_filtered(writer: DatasetWriter, stages: list, docs: Manifest, env: StageEnv) -> Manifest:
    workers = _rule_workers(docs.stats.get("documents"))
    if workers and type(stages[0]) is RuleStage:
        stages = [RulesInProcesses(stages[0], workers), *stages[1:]]
    stats = FilterStats()
    buffers: dict[str, list[dict]] = {"unsafe": [], "rest": [], "excluded": []}
    docs_iter = (d for d, _ in read_documents(docs, env.storage_options))
    total = docs.stats.get("documents")
    for doc, verdict in tqdm(run_stages(stages, docs_iter), desc="filter", unit="doc", total=total, disable=None):
        stats.update(verdict)
        buffers[verdict.label].append({
            "doc_id": doc.id, "source": doc.source, "text": doc.text,
            "meta_json": json.dumps(doc.meta, sort_keys=True, default=str), "label": verdict.label,
            "reason": verdict.reason, "stage": verdict.stage, "signals_json": json.dumps(doc.signals, sort_keys=True)})
        if len(buffers[verdict.label]) >= 512:
            writer.write(pa.Table.from_pylist(buffers[verdict.label], schema=FILTERED_SCHEMA), verdict.label)
            buffers[verdict.label] = []
    for label, rows in buffers.items():
        if rows:
            writer.write(pa.Table.from_pylist(rows, schema=FILTERED_SCHEMA), label)
    return writer.commit(stats.as_dict())


# Below this many documents the filter stage takes well under a second: not worth worker processes.
PARALLEL_RULES_MIN_DOCS = 2048


def _rule_workers(n_docs: int | None) -> int:
    """Worker processes for the rule stage: one per core, or 0 to apply the rules in this process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    usable = "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon
    return cores if usable and cores > 1 and (n_docs or 0) >= PARALLEL_RULES_MIN_DOCS else 0


class RulesInProcesses(UnsafeStage):
    """`RuleStage.run`, with the per-document work in worker processes.

    The rules are pure Python per document (~0.25 ms each: most of the filter stage), so under the
    GIL they use one core. Batches go to `workers` processes and come back with their signals and
    verdicts in input order, so the stream is exactly RuleStage's; a few batches are in flight at
    most, so the corpus is never held in memory.
    """

    def __init__(self, rules: RuleStage, workers: int, batch: int = 256):
        self.name, self.rules, self.workers, self.batch = rules.name, rules, workers, batch

    def run(self, docs: Iterable[Document]) -> Iterator[tuple[Document, Verdict]]:
        # fork: a worker starts in milliseconds with the rules already loaded, and never re-runs the
        # caller's __main__ (spawn does: an unguarded script would hang). The workers only compute.
        with ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_set_worker_rules, initargs=(self.rules,)) as pool:
            in_flight: deque[tuple[list[Document], Future]] = deque()
            docs = iter(docs)
            while batch := list(islice(docs, self.batch)):
                in_flight.append((batch, pool.submit(_judge, batch)))
                if len(in_flight) > 2 * self.workers:
                    yield from _judged(*in_flight.popleft())
            while in_flight:
                yield from _judged(*in_flight.popleft())


_worker_rules: RuleStage | None = None  # in a worker process: the RuleStage it applies


def _set_worker_rules(rules: RuleStage) -> None:
    global _worker_rules
    _worker_rules = rules


def _judge(docs: list[Document]) -> list[tuple[dict[str, float], Verdict]]:
    verdicts = [_worker_rules.verdict(doc) for doc in docs]  # fills each (worker-side) doc.signals
    return [(doc.signals, verdict) for doc, verdict in zip(docs, verdicts)]


def _judged(batch: list[Document], results: Future) -> Iterator[tuple[Document, Verdict]]:
    for doc, (signals, verdict) in zip(batch, results.result()):
        doc.signals = signals
        yield doc, verdict


def materialize_chunks(env: StageEnv, filtered: Manifest) -> Manifest:
    """Filtered documents -> chunks in `train/` and `heldout/` (split by document)."""
    data, model = env.cfg.data, env.cfg.model
    tokenizer = load_tokenizer(model.policy, model.cache_dir)
    fingerprint = tokenizer_fingerprint(tokenizer)
    config = {"data": data.model_dump(mode="json", exclude=set(INGEST_KEYS)), "policy": model.policy,
              "tokenizer": fingerprint, "chunk_excluded": env.cfg.filter.chunk_excluded}
    uri = env.out_uri("chunks", filtered.content_hash, config)
    if done := _reuse(env, uri, "chunk"):
        return done
    with DatasetWriter(uri, env.context(config, [filtered]), shard_rows=data.shard_rows,
                       schema=CHUNK_SCHEMA) as writer:
        return _write_chunks(writer, env, filtered, tokenizer, fingerprint)


def _write_chunks(writer: DatasetWriter, env: StageEnv, filtered: Manifest, tokenizer, fingerprint: str) -> Manifest:
    data = env.cfg.data
    partitions = ["unsafe", "rest"] + (["excluded"] if env.cfg.filter.chunk_excluded else [])

    def labelled() -> Iterator[tuple[Document, str, str]]:
        # Only the columns chunking uses: no meta or signals JSON to convert and parse.
        columns = ["doc_id", "source", "text", "label", "reason"]
        for part in partitions:
            for shard in artifacts.shard_uris(filtered, part):
                table = store.read_parquet(shard, env.storage_options, columns=columns)
                for doc_id, source, text, label, reason in zip(*(table[c].to_pylist() for c in columns)):
                    yield Document(id=doc_id, text=text, source=source), label, reason

    skips: Counter = Counter()
    counts: Counter = Counter()
    total = sum(filtered.stats.get("labels", {}).get(p, 0) for p in partitions) or None
    with tqdm(desc="chunk", unit="doc", total=total, disable=None) as bar:
        for table in make_chunks(labelled(), tokenizer, data, fingerprint, skips):
            for split in ("train", "heldout"):
                part = table.filter(pc.equal(table["split"], split))
                if part.num_rows:
                    writer.write(part, split)
                    counts[split] += part.num_rows
            bar.update(min(data.tokenize_batch, (bar.total or 10**12) - bar.n))
    return writer.commit({"chunks": dict(counts), "skipped": dict(skips), "tokenizer": fingerprint,
                          "suffix_tokens": data.suffix_tokens})
