from collections import Counter

import pytest

from sip_core.data.chunking import heldout, make_chunks, suffix_starts, tokenizer_fingerprint
from sip_core.config import DataConfig
from sip_core.data.documents import Document

from conftest import c4_records


def _docs(n=60):
    return [(Document(id=f"d{i}", text=r["text"], source="c4"), "rest", "") for i, r in enumerate(c4_records(n))]


def _chunk(docs, tokenizer, **overrides):
    cfg = DataConfig(**{"suffix_tokens": 32, "prefix_tokens": 64, "min_prefix_tokens": 8, **overrides})
    skips = Counter()
    rows = [r for t in make_chunks(docs, tokenizer, cfg, tokenizer_fingerprint(tokenizer), skips) for r in t.to_pylist()]
    return rows, skips, cfg


def test_suffix_is_exactly_n_policy_tokens_at_the_recorded_offset(tokenizer):
    docs = _docs()
    rows, skips, cfg = _chunk(docs, tokenizer, tokenize_batch=7)
    assert rows, "expected chunks from the C4 sample"
    text_of = {d.id: d.text for d, _, _ in docs}
    for row in rows:
        ids = tokenizer(text_of[row["doc_id"]], add_special_tokens=False)["input_ids"]
        s, p = row["suffix_start"], row["prefix_start"]
        assert row["suffix_ids"] == ids[s:s + 32]
        assert row["prefix_ids"] == ids[p:s] and 8 <= len(row["prefix_ids"]) <= 64
        assert s % 32 == 0  # random split points sit on N-token chunk boundaries (method §2.2)
        assert row["suffix_text"] == tokenizer.decode(row["suffix_ids"])
        # texts are exact slices of the document: no cut falls inside a multi-byte character
        assert text_of[row["doc_id"]][row["suffix_char_start"]:row["suffix_char_end"]] == row["suffix_text"]
        assert "\ufffd" not in row["suffix_text"] + row["prefix_text"]
    assert len(rows) + skips["too_short"] == len(docs)


def test_chunking_is_deterministic_and_batch_independent(tokenizer):
    docs = _docs(40)
    first, _, _ = _chunk(docs, tokenizer, tokenize_batch=3)
    second, _, _ = _chunk(docs, tokenizer, tokenize_batch=64)
    assert [r["chunk_id"] for r in first] == [r["chunk_id"] for r in second]
    assert first == second
    other_seed, _, _ = _chunk(docs, tokenizer, seed=1)
    assert [r["suffix_start"] for r in other_seed] != [r["suffix_start"] for r in first]


def test_too_short_documents_are_counted_not_chunked(tokenizer):
    docs = [(Document(id="short", text="Too short to cut.", source="x"), "rest", "")]
    rows, skips, _ = _chunk(docs, tokenizer)
    assert rows == [] and skips["too_short"] == 1


def test_fixed_split_point_takes_the_longest_prefix(tokenizer):
    rows, _, _ = _chunk(_docs(20), tokenizer, split_point="fixed")
    for row in rows:
        assert row["prefix_start"] == 0
        assert row["suffix_start"] == min(64, row["doc_tokens"] - 32)


def test_several_chunks_per_document_never_share_a_suffix(tokenizer):
    rows, _, _ = _chunk(_docs(20), tokenizer, chunks_per_doc=3)
    by_doc = Counter(r["doc_id"] for r in rows)
    assert max(by_doc.values()) == 3
    assert len({r["chunk_id"] for r in rows}) == len(rows)
    assert len({(r["doc_id"], r["suffix_start"]) for r in rows}) == len(rows)


@pytest.mark.parametrize("n_tokens, expected", [(40, []), (64, [32]), (100, [32, 64])])
def test_suffix_starts_need_room_for_prefix_and_suffix(n_tokens, expected):
    cfg = DataConfig(suffix_tokens=32, min_prefix_tokens=8, chunks_per_doc=5)
    assert suffix_starts(n_tokens, "doc", cfg) == expected


def test_heldout_split_is_by_document_and_near_the_requested_fraction():
    cfg = DataConfig(heldout_fraction=0.2)
    flags = [heldout(f"doc-{i}", cfg) for i in range(5000)]
    assert 0.17 < sum(flags) / len(flags) < 0.23
    assert flags == [heldout(f"doc-{i}", cfg) for i in range(5000)]


def _multibyte_docs(n=40):
    """Texts dense in multi-byte characters (split over several byte-level tokens) and special-token
    strings, so that left-truncated prefixes often start inside a character."""
    import random

    rnd = random.Random(0)
    pieces = ["漢字", "😀", "é", " word", "ß", "\n", "<|endoftext|>", "Ωμέγα", " the", "  "]
    return [(Document(id=f"m{i}", text="".join(rnd.choice(pieces) for _ in range(rnd.randint(80, 600))),
                      source="m"), "rest", "") for i in range(n)]


@pytest.mark.parametrize("docs", [_docs, _multibyte_docs], ids=["c4", "multibyte"])
def test_stored_texts_and_ids_are_exactly_the_tokenizers(tokenizer, docs):
    """The texts are stored by slicing the document where that equals decoding: they must stay equal
    to the decode of the stored ids (also when the prefix starts inside a character and decodes to
    U+FFFD), and the ids equal to transformers' own encoding."""
    docs = docs()
    rows, _, _ = _chunk(docs, tokenizer, tokenize_batch=5, prefix_tokens=7, min_prefix_tokens=1, chunks_per_doc=4)
    rows += _chunk(docs, tokenizer, tokenize_batch=5, split_point="fixed")[0]
    text_of = {d.id: d.text for d, _, _ in docs}
    assert rows
    for row in rows:
        ids = tokenizer(text_of[row["doc_id"]], add_special_tokens=False)["input_ids"]
        s, p = row["suffix_start"], row["prefix_start"]
        assert row["doc_tokens"] == len(ids)
        assert row["prefix_ids"] == ids[p:s] and row["suffix_ids"] == ids[s:s + len(row["suffix_ids"])]
        assert row["prefix_text"] == tokenizer.decode(row["prefix_ids"])
        assert row["suffix_text"] == tokenizer.decode(row["suffix_ids"])
        assert text_of[row["doc_id"]][row["suffix_char_start"]:row["suffix_char_end"]] == row["suffix_text"]
        assert "\ufffd" not in row["suffix_text"]


@pytest.mark.parametrize("docs", [_docs, _multibyte_docs], ids=["c4", "multibyte"])
def test_byte_lengths_give_the_same_chunks_as_the_offset_mapping(tokenizer, docs, monkeypatch):
    """The chunker finds cuts and character offsets from the tokens' byte lengths (the encoder then
    skips its offset mapping); any other tokenizer takes the encoder's offsets. Both must give the
    same table, byte for byte, also where prefixes start inside a character."""
    import sip_core.data.chunking as chunking

    docs = docs()
    kw = dict(tokenize_batch=5, prefix_tokens=7, min_prefix_tokens=1, chunks_per_doc=4)
    by_bytes, _, _ = _chunk(docs, tokenizer, **kw)
    monkeypatch.setattr(chunking, "_slices_are_decodes", lambda tok: False)
    by_offsets, _, _ = _chunk(docs, tokenizer, **kw)
    assert by_bytes and by_bytes == by_offsets


def test_a_document_whose_token_bytes_do_not_add_up_falls_back_to_offsets(tokenizer, monkeypatch):
    import numpy as np

    import sip_core.data.chunking as chunking

    docs = _docs(10)
    expected, _, _ = _chunk(docs, tokenizer)
    wrong = lambda tok: np.ones(len(tok.backend_tokenizer.get_vocab()) + 64, dtype=np.int64)  # noqa: E731
    monkeypatch.setattr(chunking, "_token_bytes", wrong)
    assert _chunk(docs, tokenizer)[0] == expected
