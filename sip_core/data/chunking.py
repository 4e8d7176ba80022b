"""Cut documents into (prefix, suffix) chunks: the suffix is exactly N policy tokens (method §2.2).

Everything here is deterministic given (document, config, tokenizer): the split point comes from a
hash-seeded RNG, the train/held-out split from a hash of the document id, and `chunk_id` from the
document, the suffix position and the tokenizer's own content (not its path on this machine).
"""

from __future__ import annotations

import hashlib
import random
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from sip_core.config import DataConfig
from sip_core.data.documents import Document

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
    slices = _slices_are_decodes(tokenizer)
    token_bytes = _token_bytes(tokenizer) if slices else None
    encode = _encoder(tokenizer, offsets=token_bytes is None)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
        pending = None
        for batch in _batches(docs, cfg.tokenize_batch):
            encoding = pool.submit(encode, [d.text for d, _, _ in batch])
            if pending is not None:
                yield _chunk_batch(*pending, tokenizer, token_bytes, cfg, fingerprint, skips)
            pending = batch, encoding
        if pending is not None:
            yield _chunk_batch(*pending, tokenizer, token_bytes, cfg, fingerprint, skips)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encoder(tokenizer, offsets: bool):
    """texts -> Rust `Encoding`s, the same ids as `tokenizer(texts, add_special_tokens=False)`.

    The backend is called directly when nothing in transformers' call would change its result (no
    truncation or padding set on the backend, special tokens matched as transformers would): then only
    the ids of documents that get a chunk are converted to Python, and only once. Without `offsets`,
    its `encode_batch_fast`: the same ids, no offset mapping (about a fifth of the encoder's time).
    Otherwise, the transformers call (its `.encodings`).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    direct = (backend is not None and backend.truncation is None and backend.padding is None
              and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False)))
    if direct:
        fast = getattr(backend, "encode_batch_fast", None)
        if not offsets and fast is not None:
            return lambda texts: fast(texts, add_special_tokens=False)
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


# Per tokenizer object: its vocabulary is read once per process, not once per shard (~50 ms each).
_TOKEN_BYTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _token_bytes(tokenizer) -> np.ndarray:
    """Length in UTF-8 bytes of each token id's text, for a tokenizer where `_slices_are_decodes`
    holds: a byte-level vocabulary spells each byte with one character, an added token is its text."""
    backend = tokenizer.backend_tokenizer
    size = backend.get_vocab_size(with_added_tokens=True)  # a token added since is not missed
    cached = _TOKEN_BYTES.get(tokenizer)
    if cached is not None and cached[0] == size:
        return cached[1]
    vocab = backend.get_vocab(with_added_tokens=True)
    lengths = np.zeros(max(vocab.values(), default=-1) + 1, dtype=np.int64)
    for token, i in vocab.items():
        lengths[i] = len(token)
    for i, added in backend.get_added_tokens_decoder().items():
        lengths[i] = len(added.content.encode("utf-8"))
    _TOKEN_BYTES[tokenizer] = size, lengths
    return lengths


class _Offsets:
    """Token boundaries of one document from the encoder's offset mapping (any tokenizer)."""

    consistent = True

    def __init__(self, encoding):
        self.ids = np.asarray(encoding.ids, dtype=np.int32)
        self.length, self._chars = len(self.ids), encoding.token_to_chars

    def clean(self, pos: int) -> bool:  # a cut before token `pos` falls between characters
        return pos <= 0 or pos >= self.length or self._chars(pos - 1)[1] <= self._chars(pos)[0]

    def start(self, pos: int) -> int:  # character offset where token `pos` starts
        return self._chars(pos)[0]

    def end(self, pos: int) -> int:  # character offset where token `pos` ends
        return self._chars(pos)[1]


class _ByteBatch:
    """The same boundaries for a batch of documents from the tokens' byte lengths, where the tokens'
    bytes are the text's UTF-8 bytes: a cut is clean when it does not land on a UTF-8 continuation
    byte, and character offsets count the characters that start before a byte. Computed over the
    whole batch at once (all its tokens and bytes as flat arrays); `view(k)` is document k's."""

    def __init__(self, encodings, texts: list[str], token_bytes: np.ndarray):
        n = len(texts)
        seqs = [np.asarray(e.ids, dtype=np.int32) for e in encodings]
        counts = np.fromiter(map(len, seqs), dtype=np.int64, count=n)
        first = np.zeros(n + 1, dtype=np.int64)  # doc k's tokens are ids[first[k]:first[k + 1]]
        np.cumsum(counts, out=first[1:])
        self.ids = np.concatenate(seqs) if n else np.zeros(0, dtype=np.int32)
        self.at = np.zeros(len(self.ids) + 1, dtype=np.int64)  # bytes before each token, all docs in a row
        np.cumsum(token_bytes[self.ids], out=self.at[1:])
        raws = [t.encode("utf-8") for t in texts]
        raw = b"".join(raws)
        raw_len = np.fromiter(map(len, raws), dtype=np.int64, count=n)
        text_len = np.fromiter(map(len, texts), dtype=np.int64, count=n)
        byte_first = np.zeros(n + 1, dtype=np.int64)  # doc k's bytes are raw[byte_first[k]:byte_first[k + 1]]
        np.cumsum(raw_len, out=byte_first[1:])
        char_first = np.zeros(n + 1, dtype=np.int64)  # characters before doc k
        np.cumsum(text_len, out=char_first[1:])
        base = self.at[first]
        consistent = base[1:] - base[:-1] == raw_len  # else the offsets are asked for
        # whether the byte where each token starts continues a character (a cut there is not clean);
        # a trailing NUL keeps the index of a document whose bytes do not add up in range
        codes = np.frombuffer(raw + b"\0", dtype=np.uint8)
        doc_of = np.repeat(np.arange(n), counts)
        start = self.at[:-1] - base[:-1][doc_of] + byte_first[:-1][doc_of]
        self.inside = ((codes[np.minimum(start, len(raw))] & 0xC0) == 0x80).tobytes()
        # chars[b]: characters that start at or before byte b (bytes are characters in ASCII text)
        self.chars = None if len(raw) == char_first[-1] else np.cumsum((codes[:-1] & 0xC0) != 0x80)
        self._docs = list(zip(first.tolist(), counts.tolist(), consistent.tolist(), base.tolist(),
                              byte_first.tolist(), raw_len.tolist(), char_first.tolist(), text_len.tolist()))

    def view(self, k: int) -> _Bytes:
        return _Bytes(self, *self._docs[k])


class _Bytes:
    """Document k's boundaries in a `_ByteBatch` (the interface of `_Offsets`)."""

    def __init__(self, batch: _ByteBatch, first: int, length: int, consistent: bool, base: int,
                 byte_first: int, n_bytes: int, char_first: int, n_chars: int):
        self._batch, self._first, self._base = batch, first, base
        self._byte_first, self._n_bytes, self._char_first, self._n_chars = byte_first, n_bytes, char_first, n_chars
        self.ids, self.length, self.consistent = batch.ids[first:first + length], length, consistent

    def clean(self, pos: int) -> bool:
        return pos <= 0 or pos >= self.length or not self._batch.inside[self._first + pos]

    def _char(self, pos: int) -> int:  # character holding the byte where token `pos` starts
        byte = int(self._batch.at[self._first + pos]) - self._base
        if byte >= self._n_bytes:
            return self._n_chars
        if self._batch.chars is None:
            return byte
        return int(self._batch.chars[self._byte_first + byte]) - 1 - self._char_first

    def start(self, pos: int) -> int:
        return self._char(pos)

    def end(self, pos: int) -> int:
        return self._char(pos + 1) + (0 if self.clean(pos + 1) else 1)  # a token ending inside a character


def _list_array(seqs: list[np.ndarray]) -> pa.Array:
    lengths = np.fromiter(map(len, seqs), dtype=np.int32, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32()))


def _chunk_batch(batch, encoding, tokenizer, token_bytes: np.ndarray | None, cfg: DataConfig, fingerprint: str,
                 skips: Counter) -> pa.Table:
    encodings = encoding.result()
    slices = token_bytes is not None
    n, max_prefix = cfg.suffix_tokens, cfg.prefix_tokens
    chunk_id, doc_id, source, split, label, reason = [], [], [], [], [], []
    prefix_ids, suffix_ids, prefix_text, suffix_text = [], [], [], []
    prefix_start, suffix_start, doc_tokens, prefix_char, suffix_char, suffix_end = [], [], [], [], [], []
    to_decode: list[int] = []  # rows whose prefix starts inside a character: decode (gives U+FFFD there)
    by_bytes = _ByteBatch(encodings, [d.text for d, _, _ in batch], token_bytes) if slices else None
    for k, ((doc, doc_label, doc_reason), tokens) in enumerate(zip(batch, encodings)):
        # the encoder ran without offsets where the byte lengths give the boundaries; a document
        # whose bytes do not add up (never seen) is encoded again with them
        view = by_bytes.view(k) if slices else _Offsets(tokens)
        if not view.consistent:
            view = _Offsets(_encoder(tokenizer, offsets=True)([doc.text])[0])
        length, ids, text = view.length, view.ids, doc.text
        starts = suffix_starts(length, doc.id, cfg, view.clean)
        if not starts:
            skips["too_short"] += 1
            continue
        side = "heldout" if heldout(doc.id, cfg) else "train"
        for s in starts:
            p = max(0, s - max_prefix)
            p_char, s_char, e_char = view.start(p), view.end(s - 1), view.end(s + n - 1)
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
                if not view.clean(p):
                    to_decode.append(len(prefix_text) - 1)
    # The stored texts are the decoded ids (text and ids in exact agreement); slicing the document
    # gives the same string where `_slices_are_decodes` holds and the run starts between characters.
    if not slices:
        prefix_text = _decode(tokenizer, [x.tolist() for x in prefix_ids])
        suffix_text = _decode(tokenizer, [x.tolist() for x in suffix_ids])
    for i, text in zip(to_decode, _decode(tokenizer, [prefix_ids[i].tolist() for i in to_decode])):
        prefix_text[i] = text
    return pa.Table.from_arrays([
        pa.array(chunk_id, pa.string()), pa.array(doc_id, pa.string()), pa.array(source, pa.string()),
        pa.array(split, pa.string()), pa.array(label, pa.string()), pa.array(reason, pa.string()),
        _list_array(prefix_ids), _list_array(suffix_ids),
        pa.array(prefix_text, pa.string()), pa.array(suffix_text, pa.string()),
        pa.array(prefix_start, pa.int32()), pa.array(suffix_start, pa.int32()), pa.array(doc_tokens, pa.int32()),
        pa.array(prefix_char, pa.int32()), pa.array(suffix_char, pa.int32()), pa.array(suffix_end, pa.int32()),
    ], schema=CHUNK_SCHEMA)
