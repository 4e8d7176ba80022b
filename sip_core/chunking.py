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
    encode = _encoder(tokenizer)
    slices = _slices_are_decodes(tokenizer)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
        pending = None
        for batch in _batches(docs, cfg.tokenize_batch):
            encoding = pool.submit(encode, [d.text for d, _, _ in batch])
            if pending is not None:
                yield _chunk_batch(*pending, tokenizer, slices, cfg, fingerprint, skips)
            pending = batch, encoding
        if pending is not None:
            yield _chunk_batch(*pending, tokenizer, slices, cfg, fingerprint, skips)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encoder(tokenizer):
    """texts -> Rust `Encoding`s, the same ids as `tokenizer(texts, add_special_tokens=False)`.

    The backend is called directly when nothing in transformers' call would change its result (no
    truncation or padding set on the backend, special tokens matched as transformers would): then only
    the ids of documents that get a chunk are converted to Python, and only once. Otherwise, the
    transformers call (its `.encodings`).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    direct = (backend is not None and backend.truncation is None and backend.padding is None
              and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False)))
    if direct:
        return lambda texts: backend.encode_batch(texts, add_special_tokens=False)
    return lambda texts: tokenizer(texts, add_special_tokens=False, return_attention_mask=False).encodings


def _slices_are_decodes(tokenizer) -> bool:
    """Whether decoding a run of tokens gives exactly the document text under their offsets.

    True for a byte-level BPE with no normalizer, a plain byte-level decoder, offsets that are not
    trimmed, added tokens matched verbatim, and no transformers clean-up: the tokens' bytes are the
    text's bytes, so when a run starts and ends between characters, its decode is the text slice.
    Slicing is ~0.15 ms a chunk cheaper than decoding; anything else decodes.
    """
    from tokenizers import decoders, pre_tokenizers, processors

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return False
    post = backend.post_processor
    added = backend.get_added_tokens_decoder().values()
    return (backend.normalizer is None
            and isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel)
            and isinstance(backend.decoder, decoders.ByteLevel)
            and (post is None or isinstance(post, processors.TemplateProcessing)
                 or (isinstance(post, processors.ByteLevel) and not post.trim_offsets))
            and not any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in added))


def _decode(tokenizer, seqs: list[list[int]]) -> list[str]:
    """`tokenizer.batch_decode(seqs)` without its per-token Python type checks: the same Rust decode
    per sequence. Not the Rust `decode_batch`: it queues behind the encode running in the worker."""
    if getattr(tokenizer, "clean_up_tokenization_spaces", True):  # transformers' own post-processing
        return tokenizer.batch_decode(seqs) if seqs else []
    decode = tokenizer.backend_tokenizer.decode
    return [decode(ids, skip_special_tokens=False) for ids in seqs]


def _chunk_batch(batch, encoding, tokenizer, slices: bool, cfg: DataConfig, fingerprint: str,
                 skips: Counter) -> pa.Table:
    encodings = encoding.result()
    n, max_prefix = cfg.suffix_tokens, cfg.prefix_tokens
    chunk_id, doc_id, source, split, label, reason = [], [], [], [], [], []
    prefix_ids, suffix_ids, prefix_text, suffix_text = [], [], [], []
    prefix_start, suffix_start, doc_tokens, prefix_char, suffix_char, suffix_end = [], [], [], [], [], []
    to_decode: list[int] = []  # rows whose prefix starts inside a character: decode (gives U+FFFD there)
    for (doc, doc_label, doc_reason), tokens in zip(batch, encodings):
        chars = tokens.token_to_chars  # (start, end) character offsets of one token
        length = len(tokens)

        def clean(pos: int) -> bool:  # a cut before token `pos` falls between characters
            return pos >= length or chars(pos - 1)[1] <= chars(pos)[0]

        starts = suffix_starts(length, doc.id, cfg, clean)
        if not starts:
            skips["too_short"] += 1
            continue
        ids, text = tokens.ids, doc.text
        side = "heldout" if heldout(doc.id, cfg) else "train"
        for s in starts:
            p = max(0, s - max_prefix)
            p_char, s_char, e_char = chars(p)[0], chars(s - 1)[1], chars(s + n - 1)[1]
            chunk_id.append(_hash("chunk", doc.source, doc.id, s, n, p, fingerprint)[:24])
            doc_id.append(doc.id)
            source.append(doc.source)
            split.append(side)
            label.append(doc_label)
            reason.append(doc_reason)
            prefix_ids.append(ids[p:s])
            suffix_ids.append(ids[s:s + n])
            prefix_start.append(p)
            suffix_start.append(s)
            doc_tokens.append(length)
            prefix_char.append(p_char)
            suffix_char.append(s_char)  # right where the prefix ends
            suffix_end.append(e_char)
            if slices:  # s and s + n are clean cuts (suffix_starts); p need not be
                suffix_text.append(text[s_char:e_char])
                prefix_text.append(text[p_char:s_char])
                if not (clean(p) if p else p_char == 0):
                    to_decode.append(len(prefix_text) - 1)
    # The stored texts are the decoded ids (text and ids in exact agreement); slicing the document
    # gives the same string where `_slices_are_decodes` holds and the run starts between characters.
    if not slices:
        prefix_text, suffix_text = _decode(tokenizer, prefix_ids), _decode(tokenizer, suffix_ids)
    for i, text in zip(to_decode, _decode(tokenizer, [prefix_ids[i] for i in to_decode])):
        prefix_text[i] = text
    return pa.Table.from_arrays([
        pa.array(chunk_id, pa.string()), pa.array(doc_id, pa.string()), pa.array(source, pa.string()),
        pa.array(split, pa.string()), pa.array(label, pa.string()), pa.array(reason, pa.string()),
        pa.array(prefix_ids, pa.list_(pa.int32())), pa.array(suffix_ids, pa.list_(pa.int32())),
        pa.array(prefix_text, pa.string()), pa.array(suffix_text, pa.string()),
        pa.array(prefix_start, pa.int32()), pa.array(suffix_start, pa.int32()), pa.array(doc_tokens, pa.int32()),
        pa.array(prefix_char, pa.int32()), pa.array(suffix_char, pa.int32()), pa.array(suffix_end, pa.int32()),
    ], schema=CHUNK_SCHEMA)
