"""The RLMT evaluations score what RLMT trains on, on rows it never trained on: the reward gate and
the probe cut prefixes and references as `rlmt.*` does, and thought NLL reads thoughts of held-out
chunks only."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from sip_core.config import load_config
from sip_core.infra.artifacts import ArtifactRef
from sip_core.infra.run_context import RunContext

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke config with a fifth of the documents held out, and its chunk artifact."""
    from sip_core.data.prepare import filter_documents, ingest_documents, materialize_chunks

    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"run.root={tmp_path_factory.mktemp('run')}",
                                                        "data.max_docs=60", "data.heldout_fraction=0.2"])
    env = RunContext(cfg)
    return cfg, materialize_chunks(env, filter_documents(env, ingest_documents(env)))


def _rows(cfg, chunks, partition: str) -> list[dict]:
    from sip_core.training import data

    rows = data.read_rows(chunks, partition, cfg.run.storage_options, ["chunk_id", "doc_id"])
    return rows.take(range(len(rows)))


def test_thought_nll_rows_are_disjoint_from_every_training_row(smoke, monkeypatch):
    from sip_core.augment.thought_insertion import insert_thoughts
    from sip_core.evaluation import store as evaluation_store
    from sip_core.evaluation.store import EvaluationStore, heldout_thoughts
    from sip_core.evaluation.suite import ModelEval
    from sip_core.llm.factory import open_llm
    from sip_core.training import data

    cfg, chunks = smoke
    ctx, teacher = RunContext(cfg), open_llm(cfg, "teacher")
    train_thoughts = insert_thoughts(ctx, chunks, teacher)  # every train chunk: what SFT and RLMT read
    held = insert_thoughts(ctx, chunks, teacher, limit=cfg.eval.thought_rows, split="heldout")
    rows = heldout_thoughts(ctx, ArtifactRef.of(held), ArtifactRef.of(chunks))
    assert 0 < len(rows) <= cfg.eval.thought_rows

    train = _rows(cfg, chunks, "train")
    doc_of = {r["chunk_id"]: r["doc_id"] for r in train + _rows(cfg, chunks, "heldout")}
    trained_chunks = {r["chunk_id"] for r in train} | set(data.gated_thoughts(train_thoughts, None, {})
                                                           .columns["chunk_id"])
    nll_chunks = set(rows.columns["chunk_id"])
    assert not nll_chunks & trained_chunks
    assert not {doc_of[c] for c in nll_chunks} & {doc_of[c] for c in trained_chunks}

    seen = {}

    def fake_evaluate(cfg, model_ref, chunk_manifest, judge, audit, thought_texts):
        seen["texts"] = thought_texts
        return ModelEval(model_ref)

    monkeypatch.setattr(evaluation_store, "evaluate_model", fake_evaluate)
    EvaluationStore(ctx, "bundled:m", ArtifactRef.of(chunks), "judge", ArtifactRef.of(held)).evaluate(
        SimpleNamespace(calls=0), None)
    assert seen["texts"] == rows.columns["augmented_text"]
    with pytest.raises(ValueError, match="train split"):  # the recipes' thought data is never measured on
        heldout_thoughts(ctx, ArtifactRef.of(train_thoughts), ArtifactRef.of(chunks))


def test_gate_and_probe_use_rlmt_lengths_and_the_truncated_prefix(smoke, tokenizer, monkeypatch):
    from sip_core.evaluation import generation, rlmt, suite
    from sip_core.llm.factory import open_llm

    base, chunks = smoke
    cfg = base.replace({"eval.suites": ["reward_gate", "probe"], "eval.continuation_tokens": 16,
                        "eval.max_prefix_tokens": 64,
                        "rlmt.thought_tokens": 5, "rlmt.predict_tokens": 6, "rlmt.max_prefix_tokens": 10,
                        "eval.device": "cpu"})
    rows = suite.heldout_rows(cfg, chunks)
    calls: dict[str, list] = {"think": [], "text": [], "gate": [], "probe": [], "prompts": []}

    def think_sampler(model, tok, thought_tokens, predict_tokens, temperature, top_p, device, **kw):
        calls["think"].append((thought_tokens, predict_tokens, temperature, top_p, kw["force_close"]))

        def sample(prompts, n):
            calls["prompts"] += prompts
            return [[f"{p[-12:]}</think> a prediction" for _ in range(n)] for p in prompts]
        return sample

    def text_sampler(model, tok, max_new_tokens, *args, **kw):
        calls["text"].append(max_new_tokens)
        return lambda prompts, n: [["a continuation"] * n for _ in prompts]

    def spy(name, fn):
        def wrapped(*args, **kw):
            calls[name].append((args, kw))
            return fn(*args, **kw)
        return wrapped

    monkeypatch.setattr(suite, "load_eval_model", lambda ref, cfg, rt: (None, tokenizer))
    monkeypatch.setattr(generation, "think_sampler", think_sampler)
    monkeypatch.setattr(generation, "text_sampler", text_sampler)
    monkeypatch.setattr(generation, "greedy_continuations", lambda model, tok, ids, n, *a, **kw: ["x"] * len(ids))
    monkeypatch.setattr(rlmt, "reward_gate", spy("gate", rlmt.reward_gate))
    monkeypatch.setattr(rlmt, "thought_use_probe", spy("probe", rlmt.thought_use_probe))
    out = suite.evaluate_model(cfg, "bundled:m", chunks, open_llm(cfg, "judge"))

    assert set(out.results) == {"reward_gate", "probe"}
    rc = cfg.rlmt
    assert calls["think"] == [(5, 6, rc.temperature, rc.top_p, rc.force_close)]  # RLMT's budgets and sampling
    assert 6 in calls["text"] and 12 not in calls["text"]
    references = [tokenizer.decode(r["suffix_ids"][:6]) for r in rows]
    policy_prefixes = [tokenizer.decode(r["prefix_ids"][-10:]) for r in rows]
    assert calls["prompts"] == [p + "<think>" for p in policy_prefixes]  # the prefix cut as RLMT cuts it
    (gate_args, _), = calls["gate"]
    assert list(gate_args[3]) == references  # suffix[:rlmt.predict_tokens], not [:eval.continuation_tokens]
    assert list(gate_args[2]) == [r["prefix_text"] for r in rows]  # the judge reads the prefix as in training
    assert all(len(tokenizer(ref, add_special_tokens=False)["input_ids"]) <= 7 for ref in references)
    (probe_args, probe_kw), = calls["probe"]
    assert list(probe_args[3]) == references and list(probe_kw["policy_prefixes"]) == policy_prefixes
    assert all(len(r["prefix_ids"]) > 10 for r in rows)  # so the cut is real
