"""Suffix rewriting (method §3 P5): copy a suffix that is fine, fix one that is not.

Incremental by design (the nightly job): rewrites of one chunk dataset by one rewriter live under
one folder as committed batches; each run takes the next `limit` chunks that no committed batch
covers (a call that failed covers nothing). A batch's id is a hash of its chunk ids, so a run
killed mid-batch redoes the same batch, and the judgment cache answers every call that had finished.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import DatasetWriter, Manifest
from sip_core.llm.cache import CachedLLM, require_answers
from sip_core.llm.prompting import last_words, load_prompt
from sip_core.llm.types import Progress
from sip_core.infra.models import load_tokenizer
from sip_core.infra.run_context import RunContext
from sip_core.training.data import PARTITIONS

log = logging.getLogger("sip.rewrite")

REWRITE_SCHEMA = pa.schema([
    ("chunk_id", pa.string()), ("doc_id", pa.string()), ("filter_label", pa.string()),
    ("suffix_text", pa.string()), ("rewrite_text", pa.string()), ("rewrite_ids", pa.list_(pa.int32())),
    ("token_overlap", pa.float64()), ("is_copy", pa.bool_()), ("status", pa.string()), ("error", pa.string()),
    ("judgment_key", pa.string()), ("prompt", pa.string()), ("model_id", pa.string()),
])


@dataclass
class RewriteBatch:
    manifest: Manifest | None
    remaining: int
    done_before: int


def token_overlap(a: list[int], b: list[int]) -> float:
    """Share of matching tokens in order (1.0 = exact copy)."""
    if not a and not b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def rewrite_root(env: RunContext, chunks: Manifest, llm: CachedLLM) -> str:
    """This rewriter's folder for these chunks: one per chunks + model + prompt version."""
    return env.rewrites_uri(chunks.content_hash, llm.backend.model_id, load_prompt("rewrite").key)


def batches_made_from(env: RunContext, chunks: Manifest, root: str | None = None) -> list[Manifest]:
    """Every committed rewrite batch made from these chunks (any rewriter, any night), or only
    those under one rewriter's `root`."""
    so = env.storage_options
    base = root or env.rewrites_root()
    fs, path = store.filesystem(base, so)
    if not fs.exists(path):
        return []
    pattern = ("batch-*/" if root else "*/batch-*/") + artifacts.MANIFEST
    batches = []
    for marker in sorted(fs.glob(path.rstrip("/") + "/" + pattern)):
        uri = store.join(base, *marker[len(path.rstrip("/")) + 1:].split("/")[:-1])
        manifest = artifacts.load_committed(uri, so)
        if manifest is not None and _made_from(manifest, chunks, so):
            batches.append(manifest)
    return batches


def _made_from(batch: Manifest, chunks: Manifest, storage_options: dict) -> bool:
    """Whether a rewrite batch came from these chunks: the same artifact, or one with the same
    content (prepare's folder name includes the code version; the rows do not change with it)."""
    if chunks.uri in batch.parent_uris:
        return True
    parents = (artifacts.load_committed(u, storage_options) for u in batch.parent_uris)
    return any(p is not None and p.content_hash == chunks.content_hash for p in parents)


def rewrites_for(env: RunContext, chunks: Manifest) -> tuple[dict[str, list[int]], list[Manifest]]:
    """(chunk_id -> rewrite token ids, the batches they came from); rows with status ok that are
    not a copy of the original."""
    batches = batches_made_from(env, chunks)
    found: dict[str, list[int]] = {}
    for manifest in batches:
        for f in manifest.files:
            t = store.read_parquet(f, env.storage_options, columns=["chunk_id", "rewrite_ids", "status", "is_copy"])
            for cid, ids, status, copy in zip(*(t[c].to_pylist() for c in t.column_names)):
                if status == "ok" and ids and not copy:
                    found.setdefault(cid, ids)
    return found, batches


def answered_chunk_ids(env: RunContext, chunks: Manifest, root: str | None = None,
                       retry_unparseable: bool = True) -> set[str]:
    """Chunks that are done (under one rewriter's `root`, or any). A failed call is never done: its
    chunk stays queued. With `retry_unparseable` (the nightly job) an unparseable answer is not done
    either: it is asked again on a later run with a fresh seed; without (a lifecycle rerun, which
    must make no call) any answer that came back counts. Unparseable rows are never candidates."""
    done = {"ok"} if retry_unparseable else {"ok", "unparseable"}
    return {cid for cid, statuses in chunk_statuses(env, chunks, root).items() if done & set(statuses)}


def chunk_statuses(env: RunContext, chunks: Manifest, root: str | None = None) -> dict[str, list[str]]:
    """chunk_id -> the status of each rewrite row committed for it (ok, unparseable, error)."""
    out: dict[str, list[str]] = {}
    for batch in batches_made_from(env, chunks, root):
        for shard in batch.files:
            t = store.read_parquet(shard, env.storage_options, columns=["chunk_id", "status"])
            for cid, status in zip(t["chunk_id"].to_pylist(), t["status"].to_pylist()):
                out.setdefault(cid, []).append(status)
    return out


def rewrite_next_batch(env: RunContext, chunks: Manifest, llm: CachedLLM, limit: int,
                       split: str = "train", track: Callable[[int], Progress] | None = None) -> RewriteBatch:
    """Rewrite the next `limit` chunks no committed batch covers; `track(n)` gives the progress
    callback for n calls (counts, rate, ETA in the job's log). In the train split only chunks of
    the filter partition pretraining reads (`pretrain.data`) are rewritten: a safety run's SIP
    needs rewrites of its unsafe chunks, not of the first chunks in file order."""
    so = env.storage_options
    root = rewrite_root(env, chunks, llm)
    statuses = chunk_statuses(env, chunks, root)
    done = {cid for cid, s in statuses.items() if "ok" in s}
    # Earlier unparseable answers of a chunk: its next ask gets a fresh seed (the cache would hand
    # back the same answer), and the batch id names the attempt (a retry batch is a new folder).
    attempts = {cid: s.count("unparseable") for cid, s in statuses.items()}
    tables = [store.read_parquet(f, so) for f in artifacts.shard_uris(chunks, split)]
    table = pa.concat_tables(tables) if tables else None
    partition = env.cfg.pretrain.data if split == "train" else "all"
    labels = PARTITIONS[partition]
    if table is not None and labels is not None:
        table = table.filter(pc.is_in(table["filter_label"], pa.array(labels, pa.string())))
    if table is None or table.num_rows == 0:
        return RewriteBatch(None, 0, len(done))
    todo = table.filter(pc.invert(pc.is_in(table["chunk_id"], pa.array(sorted(done), pa.string()))))
    batch = todo.slice(0, limit)
    if batch.num_rows == 0:
        return RewriteBatch(None, 0, len(done))
    ids = batch["chunk_id"].to_pylist()
    names = "\n".join(f"{cid}:{attempts[cid]}" if attempts.get(cid) else cid for cid in ids)
    uri = store.join(root, "batch-" + hashlib.sha256(names.encode()).hexdigest()[:16])
    prompt, retries = load_prompt("rewrite"), env.cfg.judge.parse_retries
    rows = batch.to_pylist()
    requests = [rewrite_request(prompt, r, {"seed": attempts[r["chunk_id"]] * 1_000_003 * (retries + 1)} if
                                attempts.get(r["chunk_id"]) else None) for r in rows]
    judgments = llm.run_parsed(requests, parse_retries=retries, progress=track(len(requests)) if track else None)
    # Only failed CALLS stop the job: an unparseable answer is an answer, committed as such (never a
    # candidate: rewrites_for reads ok rows) and asked again on a later run.
    require_answers("rewrite", [j for j in judgments if j.status != "unparseable"], env.cfg.run.max_failed_share)
    tokenizer = load_tokenizer(env.cfg.model.policy, env.cfg.model.cache_dir)
    out: dict[str, list] = {name: [] for name in REWRITE_SCHEMA.names}
    for r, j, req in zip(rows, judgments, requests):
        text = _without_prefill(j.value, req.prefill) if j.ok else None
        ids_ = rewrite_ids(tokenizer, text, r["suffix_ids"]) if text else []
        values = dict(chunk_id=r["chunk_id"], doc_id=r["doc_id"], filter_label=r["filter_label"],
                      suffix_text=r["suffix_text"], rewrite_text=tokenizer.decode(ids_) if text else None,
                      rewrite_ids=ids_, token_overlap=token_overlap(r["suffix_ids"], ids_) if text else None,
                      is_copy=ids_ == r["suffix_ids"], status=j.status, error=j.error, judgment_key=j.key,
                      prompt=j.prompt, model_id=llm.backend.model_id)
        for name, value in values.items():
            out[name].append(value)
    config = {"rewriter": env.cfg.rewriter.model_dump(mode="json", exclude={"api_key_block"}),
              "prompt": prompt.key, "split": split, "limit": limit,
              "partition": partition}
    stats = rewrite_stats(out)
    with DatasetWriter(uri, env.context(config, [chunks]), schema=REWRITE_SCHEMA,
                       shard_rows=env.cfg.data.shard_rows) as writer:
        writer.write(pa.Table.from_pydict(out, schema=REWRITE_SCHEMA))
        manifest = writer.commit({**stats, "calls": llm.calls, "cache_hits": llm.hits})
    return RewriteBatch(manifest, todo.num_rows - batch.num_rows, len(done))


def rewrite_request(prompt, row: dict, sampling: dict | None = None):
    """The P5 request for one chunk row. Prefilled (rewrite@3): the reply opens with the prefix's
    last five words, so the rewriter only continues them. `sip train-rewriter` trains on these."""
    return prompt.render(sampling, True, prefix=row["prefix_text"], suffix=row["suffix_text"],
                         prefix_ending=last_words(row["prefix_text"], 5), n_tokens=len(row["suffix_ids"]))


def rewrite_ids(tokenizer, text: str, suffix_ids: list[int]) -> list[int]:
    """A rewrite's tokens, cut to its suffix's length (the candidate a rewrite becomes)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"][:len(suffix_ids)]


def _without_prefill(text: str, prefill: str | None) -> str:
    """The rewrite itself: backends return the prefilled opening (the prefix ending) + what followed."""
    return text[len(prefill):] if prefill and text.startswith(prefill) else text


def rewrite_stats(cols: dict[str, list]) -> dict:
    by_label: dict[str, list[float]] = {}
    for label, overlap in zip(cols["filter_label"], cols["token_overlap"]):
        if overlap is not None:
            by_label.setdefault(label, []).append(overlap)
    status: dict[str, int] = {}
    for s in cols["status"]:
        status[s] = status.get(s, 0) + 1
    return {"rows": len(cols["chunk_id"]), "status": status, "copies": sum(cols["is_copy"]),
            "mean_overlap_by_label": {k: round(sum(v) / len(v), 4) for k, v in by_label.items()}}
