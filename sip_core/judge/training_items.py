"""Judge training items (METHOD §5.3): what the judge learns from, built from the chunk artifact.

- Binary-choice quality items: a train chunk's original suffix against a rule-corrupted one
  (sip_core.judge.corruptions), each in both option orders, so "which one comes first" carries no
  information about the label.
- Pointwise safety items: an original suffix labelled by the stage-1 filter (rest: safe, unsafe:
  unsafe) and, with the profanity rule, the same suffix with injected bad words (unsafe).

Texts are cut as the judge reads them: the prefix's last `prefix_tokens` tokens, each option's
first `option_tokens` tokens (a corrupted option must still differ from the original after the
cut, or it is not an item). Items come from the train split only, and a document that has any
held-out chunk (where the judge audit and every evaluation prefix come from) is left out, so
items are disjoint by document from both. A share of documents is kept as validation items
(scored before and after training, never trained on).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import DatasetWriter, Manifest
from sip_core.config import FilterConfig, resolve_wordlists
from sip_core.infra.run_context import RunContext
from sip_core.judge.corruptions import RULES, corrupt

ITEM_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("doc_id", pa.string()), ("chunk_id", pa.string()),
    ("kind", pa.string()),  # "pair" (which option continues the prefix better) or "point" (is the text safe)
    ("dimension", pa.string()), ("rule", pa.string()),  # rule: the corruption, or "original" for a plain text
    ("prefix", pa.string()), ("option_1", pa.string()), ("option_2", pa.string()), ("text", pa.string()),
    ("label", pa.string()),  # pair: "1" or "2" (the original's position); point: "YES" (safe) or "NO"
    ("split", pa.string()),  # "train" or "validation"
])
CHUNK_COLUMNS = ["chunk_id", "doc_id", "prefix_ids", "suffix_ids", "filter_label"]
SAFETY_LABELS = {"rest": "YES", "unsafe": "NO"}  # stage-1 labels; "excluded" chunks give no safety item


@dataclass(frozen=True)
class Cut:
    """How the judge reads texts: the prefix's last tokens, each option's first tokens."""

    tokenizer: object
    prefix_tokens: int
    option_tokens: int

    def prefix(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids)[-self.prefix_tokens:])

    def option(self, text: str) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.option_tokens]
        return self.tokenizer.decode(ids)


def _unit(*parts: object) -> float:
    return int(hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:8], 16) / 0x100000000


def corrupted_option(full: str, short: str, rule: str, cut: Cut, seed: int, badwords: list[str]) -> str | None:
    """The corrupted option as the judge reads it, cut to the same length as the original (a
    longer option would give the corruption away): the rule applied to the cut text when it
    applies there (numbers, names, loops, bad words stay visible), else to the whole suffix (sentence
    order needs several sentences); None when the cut result equals the original."""
    for text in (short, full):
        bad = corrupt(text, rule, seed, badwords)
        if bad is not None and (bad := cut.option(bad)).strip() != short.strip():
            return bad
    return None


def items_of_chunk(row: dict, cut: Cut, rules: list[str], safety: bool, seed: int, badwords: list[str],
                   split: str) -> Iterator[dict]:
    """Every item one chunk gives: per applicable rule a pair in both orders; safety points."""
    prefix = cut.prefix(row["prefix_ids"])
    full = cut.tokenizer.decode(row["suffix_ids"])
    short = cut.option(full)
    base = {"doc_id": row["doc_id"], "chunk_id": row["chunk_id"], "prefix": prefix, "split": split}
    for rule in rules:
        bad = corrupted_option(full, short, rule, cut, seed, badwords)
        if bad is None:
            continue
        dimension = RULES[rule][0]
        for label, (first, second) in (("1", (short, bad)), ("2", (bad, short))):
            yield {**base, "kind": "pair", "dimension": dimension, "rule": rule, "option_1": first,
                   "option_2": second, "text": "", "label": label}
        if safety and rule == "inject_profanity":
            yield {**base, "kind": "point", "dimension": "safety", "rule": rule, "option_1": "", "option_2": "",
                   "text": bad, "label": "NO"}
    if safety and row["filter_label"] in SAFETY_LABELS:
        yield {**base, "kind": "point", "dimension": "safety", "rule": "original", "option_1": "", "option_2": "",
               "text": short, "label": SAFETY_LABELS[row["filter_label"]]}


def badwords(filter_cfg: FilterConfig) -> list[str]:
    """The bad words the profanity rule injects (the audit injects the same list)."""
    path = resolve_wordlists(filter_cfg) / "ldnoobw" / "en.txt"
    return [w.strip() for w in path.read_text().splitlines() if w.strip().isalpha()]


def heldout_docs(chunks: Manifest, storage_options: dict) -> set[str]:
    """Documents with a held-out chunk: the audit's items and every evaluation prefix come from them."""
    tables = [store.read_parquet(f, storage_options, columns=["doc_id"])
              for f in artifacts.shard_uris(chunks, "heldout")]
    return {d for t in tables for d in t.column("doc_id").to_pylist()}


def train_chunks(chunks: Manifest, storage_options: dict, limit: int) -> tuple[list[dict], int]:
    """The first `limit` train-split chunks of documents with no held-out chunk, and how many were
    left out for sharing a document with the held-out split."""
    excluded = heldout_docs(chunks, storage_options)
    rows, dropped = [], 0
    for f in artifacts.shard_uris(chunks, "train"):
        for row in store.read_parquet(f, storage_options, columns=CHUNK_COLUMNS).to_pylist():
            if row["doc_id"] in excluded:
                dropped += 1
            elif len(rows) < limit:
                rows.append(row)
    return rows, dropped


def item_config(jc) -> dict:
    """What the items depend on besides the chunks and the code (their artifact's key)."""
    return {"chunks": jc.chunks, "rules": sorted(jc.rules), "safety_items": jc.safety_items,
            "prefix_tokens": jc.prefix_tokens, "option_tokens": jc.option_tokens,
            "validation_fraction": jc.validation_fraction, "tokenizer": jc.init}


def build_items(env: RunContext, chunks: Manifest, jc, tokenizer, badwords: list[str]) -> Manifest:
    """The judge items of `chunks` under the `judge_train` section `jc`, as a committed,
    content-addressed dataset (reused when it exists) whose parent is the chunk artifact."""
    so, seed = env.storage_options, env.cfg.data.seed
    config = item_config(jc)
    uri = env.stage_uri("judge-items", chunks.content_hash, config)
    if done := artifacts.load_committed(uri, so):
        return done
    rows, dropped = train_chunks(chunks, so, jc.chunks)
    cut = Cut(tokenizer, jc.prefix_tokens, jc.option_tokens)
    cols: dict[str, list] = {n: [] for n in ITEM_SCHEMA.names}
    for row in rows:
        split = "validation" if _unit("validation", seed, row["doc_id"]) < jc.validation_fraction else "train"
        for item in items_of_chunk(row, cut, jc.rules, jc.safety_items, seed, badwords, split):
            item["item_id"] = hashlib.sha256(repr(sorted(item.items())).encode()).hexdigest()[:20]
            for name in ITEM_SCHEMA.names:
                cols[name].append(item[name])
    counts = Counter(zip(cols["split"], cols["rule"]))
    stats = {"items": len(cols["item_id"]), "chunks": len(rows), "dropped_heldout_docs": dropped,
             "by_split_rule": {f"{s}/{r}": n for (s, r), n in sorted(counts.items())},
             "labels": dict(Counter(cols["label"]))}
    with DatasetWriter(uri, env.context(config, [chunks]), schema=ITEM_SCHEMA) as writer:
        writer.write(pa.Table.from_pydict(cols, schema=ITEM_SCHEMA))
        return writer.commit(stats)


def read_items(items: Manifest, storage_options: dict, split: str | None = None) -> list[dict]:
    out = [r for f in items.files for r in store.read_parquet(f, storage_options).to_pylist()]
    return [r for r in out if split is None or r["split"] == split]
