"""Cut documents into (prefix, suffix) chunks: the suffix is exactly N policy tokens (method §2.2).

Everything here is deterministic given (document, config, tokenizer): the split point comes from a
hash-seeded RNG, the train/held-out split from a hash of the document id, and `chunk_id` from the
document, the suffix position and the tokenizer's own content (not its path on this machine).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Iterator

import pyarrow as pa

from sip_core.config import DataConfig
from sip_core.documents import Document

CHUNK_SCHEMA = pa.schema([
    ("chunk_id", pa.string()),
    ("doc_id", pa.string()),
    ("source", pa.string()),
    ("split", pa.string()),
    ("filter_label", pa.string()),
    ("filter_reason", pa.string()),
    ("prefix_ids", pa.list_(pa.int32())),
    ("suffix_ids", pa.list_(pa.int32())),
    ("prefix_text", pa.string()),
    ("suffix_text", pa.string()),
    ("prefix_start", pa.int32()),  # token offsets into the document
    ("suffix_start", pa.int32()),
    ("doc_tokens", pa.int32()),
    ("prefix_char_start", pa.int32()),  # character offsets into the document text
    ("suffix_char_start", pa.int32()),
    ("suffix_char_end", pa.int32()),
])


def _hash(*parts: object) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the tokenizer's full definition, so ids agree across machines and cache paths."""
    return _hash(tokenizer.backend_tokenizer.to_str())[:16]


def heldout(doc_id: str, cfg: DataConfig) -> bool:
    """Split by document (method §2.5): all chunks of a document land on the same side."""
    return int(_hash("split", cfg.seed, doc_id)[:8], 16) / 0x100000000 < cfg.heldout_fraction


def suffix_starts(n_tokens: int, doc_id: str, cfg: DataConfig, clean=lambda pos: True) -> list[int]:
    """Token positions where a suffix begins; empty when the document is too short.

    `clean(pos)` says whether a cut before token `pos` falls between characters; byte-level BPE can
    split one character over two tokens, and a cut there would leave U+FFFD in both texts.
    """
    n = cfg.suffix_tokens
    if cfg.split_point == "fixed":
        start = min(cfg.prefix_tokens, n_tokens - n)
        while start >= cfg.min_prefix_tokens and not (clean(start) and clean(start + n)):
            start -= 1
        return [start] if start >= cfg.min_prefix_tokens else []
    # random: a boundary between N-token chunks, with at least min_prefix tokens before it
    first = max(1, -(-cfg.min_prefix_tokens // n))
    candidates = [s for s in range(first * n, n_tokens - n + 1, n) if clean(s) and clean(s + n)]
    rng = random.Random(_hash("start", cfg.seed, doc_id))
    return sorted(rng.sample(candidates, min(cfg.chunks_per_doc, len(candidates))))


def make_chunks(docs: Iterable[tuple[Document, str, str]], tokenizer, cfg: DataConfig, fingerprint: str,
                skips: Counter) -> Iterator[pa.Table]:
    """Yield one pyarrow table per tokenizer batch. `docs` yields (doc, filter_label, filter_reason)."""
    batch: list[tuple[Document, str, str]] = []
    for item in docs:
        batch.append(item)
        if len(batch) >= cfg.tokenize_batch:
            yield _chunk_batch(batch, tokenizer, cfg, fingerprint, skips)
            batch = []
    if batch:
        yield _chunk_batch(batch, tokenizer, cfg, fingerprint, skips)


def _chunk_batch(batch, tokenizer, cfg: DataConfig, fingerprint: str, skips: Counter) -> pa.Table:
    enc = tokenizer([d.text for d, _, _ in batch], add_special_tokens=False, return_offsets_mapping=True,
                    return_attention_mask=False)
    rows: dict[str, list] = {name: [] for name in CHUNK_SCHEMA.names}
    n = cfg.suffix_tokens
    for (doc, label, reason), ids, offsets in zip(batch, enc["input_ids"], enc["offset_mapping"]):
        starts = suffix_starts(len(ids), doc.id, cfg,
                               lambda pos: pos >= len(ids) or offsets[pos - 1][1] <= offsets[pos][0])
        if not starts:
            skips["too_short"] += 1
            continue
        split = "heldout" if heldout(doc.id, cfg) else "train"
        for s in starts:
            p = max(0, s - cfg.prefix_tokens)
            rows["chunk_id"].append(_hash("chunk", doc.source, doc.id, s, n, p, fingerprint)[:24])
            rows["doc_id"].append(doc.id)
            rows["source"].append(doc.source)
            rows["split"].append(split)
            rows["filter_label"].append(label)
            rows["filter_reason"].append(reason)
            rows["prefix_ids"].append(ids[p:s])
            rows["suffix_ids"].append(ids[s:s + n])
            rows["prefix_start"].append(p)
            rows["suffix_start"].append(s)
            rows["doc_tokens"].append(len(ids))
            rows["prefix_char_start"].append(offsets[p][0])
            rows["suffix_char_start"].append(offsets[s - 1][1])  # right where the prefix ends
            rows["suffix_char_end"].append(offsets[s + n - 1][1])
    # Decoding the ids (not slicing the text) keeps text and ids in exact agreement.
    rows["prefix_text"] = tokenizer.batch_decode(rows["prefix_ids"]) if rows["prefix_ids"] else []
    rows["suffix_text"] = tokenizer.batch_decode(rows["suffix_ids"]) if rows["suffix_ids"] else []
    return pa.Table.from_pydict(rows, schema=CHUNK_SCHEMA)
