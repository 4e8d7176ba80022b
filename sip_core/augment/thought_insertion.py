"""Thought insertion (method §2.6, P9): a teacher interleaves `<think>…</think>` spans into a chunk.

Integrity gate: removing the thoughts must give back the original chunk exactly (or, with
`normalized`, up to NFKC and whitespace); any other row is rejected and counted, never kept.
Rows of train chunks are split 50/50 by chunk id into the SFT half and the RL half (method: data
flow B); rows of held-out chunks (`split="heldout"`) are the evaluation's thought-NLL rows.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import unicodedata
from collections.abc import Callable

import pyarrow as pa

from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import DatasetWriter, Manifest
from sip_core.llm.cache import CachedLLM, require_answers
from sip_core.llm.thought_markup import strip_thoughts, thought_spans
from sip_core.llm.prompting import load_prompt
from sip_core.llm.types import Progress
from sip_core.infra.run_context import RunContext

THOUGHT_SCHEMA = pa.schema([
    ("chunk_id", pa.string()), ("half", pa.string()), ("raw_text", pa.string()), ("augmented_text", pa.string()),
    ("n_thoughts", pa.int32()), ("thought_chars", pa.int32()), ("coverage", pa.float64()),
    ("status", pa.string()), ("reason", pa.string()), ("judgment_key", pa.string()),
])


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def coverage(raw: str, stripped: str) -> float:
    """Share of the raw text's characters found, in order, in the text outside thoughts."""
    if not raw:
        return 1.0
    matcher = difflib.SequenceMatcher(None, raw, stripped, autojunk=False)
    return sum(b.size for b in matcher.get_matching_blocks()) / len(raw)


def gate(raw: str, augmented: str | None, mode: str = "exact") -> tuple[str, str]:
    """(status, reason): ok, or rejected with why. `augmented` None means it did not parse."""
    if augmented is None:
        return "malformed", "teacher output did not parse"
    if not thought_spans(augmented):
        return "rejected", "no thoughts inserted"
    # "exact" forgives only blank lines around the whole chunk (the parser trims them).
    stripped = strip_thoughts(augmented)
    same = stripped.strip("\n") == raw.strip("\n") if mode == "exact" else normalize(stripped) == normalize(raw)
    return ("ok", "") if same else ("rejected", f"text changed ({mode} match failed)")


def half_of(chunk_id: str) -> str:
    return "sft" if int(hashlib.sha256(f"half:{chunk_id}".encode()).hexdigest()[:8], 16) % 2 == 0 else "rl"


def insert_thoughts(env: RunContext, chunks: Manifest, llm: CachedLLM, limit: int | None = None,
                    match: str = "exact", split: str = "train",
                    track: Callable[[int], Progress] | None = None) -> Manifest:
    so = env.storage_options
    tables = [store.read_parquet(f, so, columns=["chunk_id", "prefix_text", "suffix_text"])
              for f in artifacts.shard_uris(chunks, split)]
    rows = pa.concat_tables(tables).to_pylist()[:limit] if tables else []
    prompt = load_prompt("thoughts")
    raws = [r["prefix_text"] + r["suffix_text"] for r in rows]
    config = {"teacher": env.cfg.teacher.model_dump(mode="json", exclude={"api_key_block"}), "prompt": prompt.key,
              "match": match, "limit": limit, "split": split, "model_id": llm.backend.model_id}
    uri, done = _next_attempt(env, chunks, config)
    if done is not None:
        return done
    judgments = llm.run_parsed([prompt.render(None, text=raw) for raw in raws], env.cfg.judge.parse_retries,
                               progress=track(len(raws)) if track else None)
    # A failed call is never data: all failed -> nothing is committed (CallsFailed); some failed ->
    # committed as status "failed", and the next run asks exactly those again (a new attempt).
    require_answers("thoughts", [j for j in judgments if j.status != "unparseable"], env.cfg.run.max_failed_share)
    cols: dict[str, list] = {name: [] for name in THOUGHT_SCHEMA.names}
    for r, raw, j in zip(rows, raws, judgments):
        augmented = j.value if j.ok else None
        status, reason = ("failed", j.error or "call failed") if j.status == "error" else gate(raw, augmented, match)
        spans = thought_spans(augmented) if augmented else []
        values = dict(chunk_id=r["chunk_id"], half=half_of(r["chunk_id"]), raw_text=raw, augmented_text=augmented,
                      n_thoughts=len(spans), thought_chars=sum(end - start for start, end in spans),
                      coverage=coverage(raw, strip_thoughts(augmented)) if augmented else 0.0,
                      status=status, reason=reason, judgment_key=j.key)
        for name, value in values.items():
            cols[name].append(value)
    with DatasetWriter(uri, env.context(config, [chunks]), schema=THOUGHT_SCHEMA,
                       shard_rows=env.cfg.data.shard_rows) as writer:
        table = pa.Table.from_pydict(cols, schema=THOUGHT_SCHEMA)
        for status in ("ok", "rejected", "malformed", "failed"):
            part = table.filter(pa.compute.equal(table["status"], status))
            if part.num_rows:
                writer.write(part, status)
        return writer.commit({**thought_stats(cols, llm), "split": split})


def _next_attempt(env: RunContext, chunks: Manifest, config: dict) -> tuple[str, Manifest | None]:
    """(where this run writes, or the committed thought data to reuse). A committed attempt with no
    failed call is the answer; one with failed calls is not done: the next attempt asks again (the
    judgment cache answers every call that came back, so only the failed ones reach the teacher)."""
    for attempt in range(1000):
        uri = env.stage_uri("thoughts", chunks.content_hash, {**config, **({"attempt": attempt} if attempt else {})})
        done = artifacts.load_committed(uri, env.storage_options)
        if done is None:
            return uri, None
        if not done.stats.get("failed"):
            return uri, done
    raise RuntimeError(f"thoughts: 1000 attempts with failed calls under {uri}")


def thought_stats(cols: dict[str, list], llm: CachedLLM) -> dict:
    n = len(cols["chunk_id"])
    ok = [i for i, s in enumerate(cols["status"]) if s == "ok"]
    count = lambda s: sum(1 for x in cols["status"] if x == s)  # noqa: E731
    return {"rows": n, "kept": len(ok), "rejected": count("rejected"), "malformed": count("malformed"),
            "failed": count("failed"),
            "thoughts_per_kept_row": round(sum(cols["n_thoughts"][i] for i in ok) / len(ok), 3) if ok else 0.0,
            "mean_coverage": round(sum(cols["coverage"]) / n, 4) if n else 0.0,
            "halves": {h: cols["half"].count(h) for h in ("sft", "rl")}, "calls": llm.calls, "cache_hits": llm.hits}
