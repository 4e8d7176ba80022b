"""Judge training items: both option orders with mirrored labels, safety labels from the filter,
disjoint by document from the audit's items and the held-out split, cut to the judge's lengths."""

from __future__ import annotations

from collections import Counter

import pytest

from llm_job_fixtures import chunks, smoke_config  # noqa: F401  (chunks: the fixture)
from sip_core.infra import store
from sip_core.infra.run_context import RunContext

RULES = ["shuffle_sentences", "repeat_loop", "swap_numbers", "inject_profanity"]


def _items(root, manifest, *extra):
    from sip_core.judge import training_items
    from sip_core.infra.models import load_tokenizer

    cfg = smoke_config(root, None, "judge_train.chunks=40", f"judge_train.rules={RULES}",
                       "judge_train.prefix_tokens=24", "judge_train.option_tokens=16",
                       "judge_train.validation_fraction=0.25", *extra)
    env = RunContext(cfg)
    tok = load_tokenizer(cfg.judge_train.init)
    items = training_items.build_items(env, manifest, cfg.judge_train, tok, training_items.badwords(cfg.filter))
    return env, tok, items, training_items.read_items(items, env.storage_options)


def test_pairs_come_in_both_orders_with_the_original_labelled(chunks, tmp_path, tokenizer):
    root, manifest = chunks
    env, tok, items, rows = _items(tmp_path, manifest)
    pairs = [r for r in rows if r["kind"] == "pair"]
    assert pairs and {r["rule"] for r in pairs} <= set(RULES) and "swap_entities" not in {r["rule"] for r in rows}
    by_key = Counter((r["chunk_id"], r["rule"], r["label"]) for r in pairs)
    for (chunk, rule, label), n in by_key.items():  # every pair has its mirror, with the other label
        assert n == 1 and by_key[(chunk, rule, "2" if label == "1" else "1")] == 1
    labels = Counter(r["label"] for r in pairs)
    assert labels["1"] == labels["2"]
    mirror = {(r["chunk_id"], r["rule"], r["label"]): r for r in pairs}
    for r in pairs:
        other = mirror[(r["chunk_id"], r["rule"], "2" if r["label"] == "1" else "1")]
        assert (r["option_1"], r["option_2"]) == (other["option_2"], other["option_1"])
        original = r["option_1"] if r["label"] == "1" else r["option_2"]
        corrupted = r["option_2"] if r["label"] == "1" else r["option_1"]
        assert original.strip() != corrupted.strip()
        assert len(tokenizer(corrupted, add_special_tokens=False)["input_ids"]) <= 16 + 2
        assert len(tokenizer(r["prefix"], add_special_tokens=False)["input_ids"]) <= 24 + 2
    # the same original text in every item of a chunk: the judge compares like with like
    originals = {}
    for r in pairs:
        originals.setdefault(r["chunk_id"], set()).add(r["option_1"] if r["label"] == "1" else r["option_2"])
    assert all(len(v) == 1 for v in originals.values())


def test_safety_points_are_labelled_by_the_filter_and_profanity(chunks, tmp_path):
    root, manifest = chunks
    _, _, _, rows = _items(tmp_path, manifest)
    points = [r for r in rows if r["kind"] == "point"]
    assert {r["label"] for r in points if r["rule"] == "inject_profanity"} == {"NO"}
    labels = {r["chunk_id"]: r["filter_label"] for f in manifest.files
              for r in store.read_parquet(f, columns=["chunk_id", "filter_label"]).to_pylist()}
    originals = [r for r in points if r["rule"] == "original"]
    assert originals
    for r in originals:
        assert r["label"] == {"rest": "YES", "unsafe": "NO"}[labels[r["chunk_id"]]]


def test_items_are_disjoint_by_document_from_the_audit_and_heldout_split(chunks, tmp_path):
    from sip_core.judge.audit import build_pairs
    from sip_core.judge.training_items import heldout_docs

    root, manifest = chunks
    env, _, items, rows = _items(tmp_path, manifest)
    docs = {r["doc_id"] for r in rows}
    chunk_doc = {r["chunk_id"]: r["doc_id"] for f in manifest.files
                 for r in store.read_parquet(f, columns=["chunk_id", "doc_id"]).to_pylist()}
    audit = build_pairs(env, manifest, 16)
    audit_docs = {chunk_doc[r["chunk_id"]] for f in audit.files for r in store.read_parquet(f).to_pylist()}
    assert docs and audit_docs and not docs & audit_docs
    assert not docs & heldout_docs(manifest, env.storage_options)
    # validation items never share a document with training items
    by_split = {s: {r["doc_id"] for r in rows if r["split"] == s} for s in ("train", "validation")}
    assert by_split["train"] and by_split["validation"] and not by_split["train"] & by_split["validation"]
    # content-addressed: the same config reuses the committed artifact; lineage names the chunks
    _, _, again, _ = _items(tmp_path, manifest)
    assert again.artifact_id == items.artifact_id and manifest.artifact_id in items.parents


def test_a_document_with_a_heldout_chunk_gives_no_item(tmp_path, tokenizer):
    """Chunks of one document can fall on both sides when the split is not by document: the train
    side of such a document is left out (the audit and evaluations read its held-out side)."""
    import pyarrow as pa

    from sip_core.infra.artifacts import DatasetWriter
    from sip_core.judge.training_items import train_chunks

    env = RunContext(smoke_config(tmp_path))
    ids = tokenizer("Some words here.", add_special_tokens=False)["input_ids"]
    def row(chunk: str, doc: str) -> dict:
        return {"chunk_id": chunk, "doc_id": doc, "prefix_ids": ids, "suffix_ids": ids, "filter_label": "rest"}

    with DatasetWriter(str(tmp_path / "chunks"), env.context({}, [])) as w:
        w.write(pa.Table.from_pylist([row("a1", "A"), row("b1", "B")]), "train")
        w.write(pa.Table.from_pylist([row("a2", "A")]), "heldout")
        manifest = w.commit()
    rows, dropped = train_chunks(manifest, {}, 10)
    assert [r["chunk_id"] for r in rows] == ["b1"] and dropped == 1


def test_a_tokenizer_that_cannot_tell_the_verdicts_apart_is_refused():
    from sip_core.llm.prompting import load_prompt
    from sip_core.recipes.train_judge import NoJudgeItems, check_options

    class OneToken:  # every text is the same single token
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [7]}

    prompts = {"pair": load_prompt("judge_quality"), "point": load_prompt("judge_safety")}
    with pytest.raises(NoJudgeItems, match="cannot tell"):
        check_options(prompts, OneToken())


def test_the_recipe_renders_what_the_local_backend_sends(tokenizer):
    """A judge is trained on exactly the text the local backend gives it at judging time."""
    from types import SimpleNamespace

    from sip_core.llm.backends.local import LocalHFBackend
    from sip_core.llm.prompting import load_prompt
    from sip_core.recipes.train_judge import chat_text

    req = load_prompt("judge_quality").render(None, True, prefix="The start.", option_1="A b.", option_2="C d.")
    assert chat_text(tokenizer, req.messages) == LocalHFBackend._prompt_text(SimpleNamespace(tokenizer=tokenizer), req)
    assert chat_text(tokenizer, req.messages).endswith("Conclusion: Option ")


def test_the_heldout_audit_counts_order_consistency_first_option_share_and_the_gate():
    """A judge that always answers "1" is right on half the pairs, never order-consistent, and fails
    the gate on its first-option share; one that always finds the original passes."""
    from types import SimpleNamespace

    from sip_core.config import load_config
    from sip_core.judge.training_audit import gate, markdown, order_consistency
    from sip_core.recipes.train_judge import accuracy_by

    def pair(chunk, label):
        item = {"kind": "pair", "chunk_id": chunk, "rule": "repeat_loop", "dimension": "quality", "label": label}
        return SimpleNamespace(item=item, target=0 if label == "1" else 1)

    encoded = [pair(c, lab) for c in ("a", "b") for lab in ("1", "2")]
    first = [0.9 if e.target == 0 else 0.1 for e in encoded]  # P(right verdict) of a judge that says "1"
    right = [0.9] * 4
    cfg = load_config(None, [])
    reports = {}
    for name, probs in (("first", first), ("right", right)):
        report = {**accuracy_by(encoded, probs), **order_consistency(encoded, probs)}
        report["gate_reasons"] = gate(report, cfg)
        report["gate"] = "passed" if not report["gate_reasons"] else "FAILED"
        reports[name] = report
    assert reports["first"]["all"] == 0.5 and reports["first"]["first_option_share"] == 1.0
    assert reports["first"]["order_consistency/quality"] == 0.0 and reports["first"]["gate"] == "FAILED"
    assert reports["right"]["all"] == 1.0 and reports["right"]["first_option_share"] == 0.5
    assert reports["right"]["order_consistency/quality"] == 1.0 and reports["right"]["gate"] == "passed"
    table = markdown(reports, ["repeat_loop"])
    assert "rule/repeat_loop (left out of training)" in table and "| gate | FAILED" in table


def test_the_heldout_audit_table_gives_intervals_and_pools_only_the_trained_rules():
    """Each accuracy carries its Wilson interval and n; the pooled row weighs the trained pairwise
    rules by their item counts and leaves out the left-out rule and the pointwise items."""
    from types import SimpleNamespace

    from sip_core.judge.training_audit import markdown, trained_rules_accuracy
    from sip_core.recipes.train_judge import accuracy_by

    def item(rule, kind="pair", label="1"):
        it = {"kind": kind, "chunk_id": "c", "rule": rule, "dimension": "quality", "label": label}
        return SimpleNamespace(item=it, target=0 if label in ("1", "YES") else 1)

    encoded = ([item("repeat_loop")] * 6 + [item("shuffle_sentences")] * 2 + [item("swap_entities")] * 4
               + [item("original", "point", "YES")] * 3)
    right = [0.9] * 6 + [0.9, 0.1] + [0.1] * 4 + [0.1] * 3
    report = accuracy_by(encoded, right) | {"gate": "passed", "gate_reasons": []}
    assert report["counts"]["rule/repeat_loop"] == 6 and report["counts"]["rule/original:point"] == 3
    accuracy, n = trained_rules_accuracy(report, ["swap_entities"])
    assert n == 8 and accuracy == 7 / 8
    table = markdown({"judge": report}, ["swap_entities"])
    assert "| trained rules (pairs) | 0.875 [0.53, 0.98] n=8 |" in table  # Wilson 7/8 by hand: 0.529, 0.978
    assert "| rule/swap_entities (left out of training) | 0.000 [0.00, 0.49] n=4 |" in table
