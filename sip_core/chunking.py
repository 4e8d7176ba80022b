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
from concurrent.futures import ThreadPoolExecutor

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
    # The Rust tokenizer releases the GIL, so one worker thread encodes batch k+1 while this thread
    # reads the next documents and turns batch k into rows. Tables come out in input order.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
        pending = None
        for batch in _batches(docs, cfg.tokenize_batch):
            encoding = pool.submit(_encode, tokenizer, [d.text for d, _, _ in batch])
            if pending is not None:
                yield _chunk_batch(*pending, tokenizer, cfg, fingerprint, skips)
            pending = batch, encoding
        if pending is not None:
            yield _chunk_batch(*pending, tokenizer, cfg, fingerprint, skips)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode(tokenizer, texts: list[str]):
    # No offset_mapping: converting every token's offsets to Python costs as much as the ids; the
    # few offsets needed are read from the Rust encodings (`token_to_chars`) instead.
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)


def _decode(tokenizer, seqs: list[list[int]]) -> list[str]:
    """`tokenizer.batch_decode(seqs)` without its per-token Python type checks: the same Rust decode
    per sequence. Not the Rust `decode_batch`: it queues behind the encode running in the worker."""
    if getattr(tokenizer, "clean_up_tokenization_spaces", True):  # transformers' own post-processing
        return tokenizer.batch_decode(seqs) if seqs else []
    decode = tokenizer.backend_tokenizer.decode
    return [decode(ids, skip_special_tokens=False) for ids in seqs]


def _chunk_batch(batch, encoding, tokenizer, cfg: DataConfig, fingerprint: str, skips: Counter) -> pa.Table:
    enc = encoding.result()
    rows: dict[str, list] = {name: [] for name in CHUNK_SCHEMA.names}
    n = cfg.suffix_tokens
    for (doc, label, reason), ids, tokens in zip(batch, enc["input_ids"], enc.encodings):
        chars = tokens.token_to_chars  # (start, end) character offsets of one token
        starts = suffix_starts(len(ids), doc.id, cfg,
                               lambda pos: pos >= len(ids) or chars(pos - 1)[1] <= chars(pos)[0])
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
            rows["prefix_char_start"].append(chars(p)[0])
            rows["suffix_char_start"].append(chars(s - 1)[1])  # right where the prefix ends
            rows["suffix_char_end"].append(chars(s + n - 1)[1])
    # Decoding the ids (not slicing the text) keeps text and ids in exact agreement.
    rows["prefix_text"] = _decode(tokenizer, rows["prefix_ids"])
    rows["suffix_text"] = _decode(tokenizer, rows["suffix_ids"])
    return pa.Table.from_pydict(rows, schema=CHUNK_SCHEMA)
