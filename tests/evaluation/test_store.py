"""One model's evaluations as a cached artifact: keyed by model, config, judge and data; a second
lookup loads the committed result and makes no judge call."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sip_core.config import load_config
from sip_core.evaluation import store as evaluation_store
from sip_core.evaluation.nll import NLLResult
from sip_core.evaluation.store import EvaluationStore, ModelEvaluation, model_identity
from sip_core.evaluation.suite import ModelEval
from sip_core.infra import artifacts
from sip_core.infra.artifacts import ArtifactRef
from sip_core.infra.run_context import RunContext


@pytest.fixture
def ctx(tmp_path) -> RunContext:
    return RunContext(load_config(None, [f"run.root={tmp_path / 'run'}", "judge.model=none"]))


def _artifact(ctx: RunContext, name: str, payload: dict) -> ArtifactRef:
    uri = str(ctx.cfg.run.root) + f"/{name}"
    return ArtifactRef.of(artifacts.write_json_artifact(uri, f"{name}.json", payload, ctx.context({}, []),
                                                        kind="test"))


def test_the_key_follows_model_judge_and_data(ctx):
    chunks, other = _artifact(ctx, "chunks", {"a": 1}), _artifact(ctx, "other", {"a": 2})
    uri = EvaluationStore(ctx, "bundled:m", chunks, "judge-1").uri
    assert uri == EvaluationStore(ctx, "bundled:m", chunks, "judge-1").uri
    assert uri.startswith(ctx.root + "/eval/")
    assert len({uri, EvaluationStore(ctx, "bundled:m", chunks, "judge-2").uri,
                EvaluationStore(ctx, "bundled:n", chunks, "judge-1").uri,
                EvaluationStore(ctx, "bundled:m", other, "judge-1").uri,
                EvaluationStore(ctx, "bundled:m", chunks, "judge-1", thoughts=other).uri}) == 5


def test_the_key_follows_the_rlmt_settings_the_reward_gate_samples_and_scores_with(ctx):
    chunks = _artifact(ctx, "chunks", {"a": 1})
    uri = EvaluationStore(ctx, "bundled:m", chunks, "judge-1").uri
    for override in ({"rlmt.reward": "expected"}, {"rlmt.thought_tokens": 7}, {"rlmt.temperature": 0.5}):
        other = RunContext(ctx.cfg.replace(override))
        assert EvaluationStore(other, "bundled:m", chunks, "judge-1").uri != uri, override
    untouched = RunContext(ctx.cfg.replace({"rlmt.lr": 3e-6}))  # training-only: the evaluation does not read it
    assert EvaluationStore(untouched, "bundled:m", chunks, "judge-1").uri == uri


def test_a_committed_checkpoint_is_known_by_its_content(ctx):
    model = _artifact(ctx, "model", {"weights": 1})
    assert model_identity(model.uri, ctx.storage_options) == model.content_hash
    assert model_identity("bundled:m") == "bundled:m"


def test_evaluate_commits_and_a_second_lookup_is_cached(ctx, monkeypatch):
    chunks = _artifact(ctx, "chunks", {"a": 1})
    runs = []

    def fake_evaluate(cfg, model_ref, chunk_manifest, judge, audit, thought_texts):
        runs.append(model_ref)
        judge.calls += 7
        return ModelEval(model_ref, {"heldout_nll": NLLResult(n=2, nll=1.5, tokens=10)}, ["a", "b"],
                         {"heldout_nll": 0.1})

    monkeypatch.setattr(evaluation_store, "evaluate_model", fake_evaluate)
    evaluations = EvaluationStore(ctx, "bundled:m", chunks, "judge-1")
    assert evaluations.load() is None
    first = evaluations.evaluate(SimpleNamespace(calls=0), None)
    assert isinstance(first, ModelEvaluation) and not first.cached and first.judge_calls == 7
    again = EvaluationStore(ctx, "bundled:m", chunks, "judge-1").load()
    assert runs == ["bundled:m"]
    assert again.cached and again.judge_calls == 0 and again.uri == first.uri
    assert again.results == first.results and again.results["heldout_nll"]["nll"] == 1.5
    assert again.continuations == ["a", "b"] and again.seconds == {"heldout_nll": 0.1}
    manifest = artifacts.load_committed(first.uri)
    assert manifest.kind == "evaluation" and manifest.parents == [chunks.artifact_id]


def test_the_key_follows_the_evaluation_judges_config_not_the_training_judges(tmp_path):
    def uri(*overrides):
        c = RunContext(load_config(None, [f"run.root={tmp_path / 'run'}", *overrides]))
        chunks = _artifact(c, "chunks", {"a": 1})
        return EvaluationStore(c, "bundled:m", chunks, "judge-1").uri

    assert uri() == uri("judge.parse_retries=1") != uri("eval_judge.parse_retries=1")
