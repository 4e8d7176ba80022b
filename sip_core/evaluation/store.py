"""One model's evaluations as a content-addressed artifact, and pairwise comparisons.

An evaluation is keyed by the model (its checkpoint's content hash, or the ref itself), the eval
and judge config, the rlmt.* settings the reward gate and probe sample and score with, the judge's model id, the chunk data, the held-out thought data and the code, so a rerun finds
every result committed and calls no judge. An evaluation with a failed judge call is never
committed: it comes back `partial`, with the failed calls counted per suite, and the next run
evaluates again (greedy continuations are deterministic and the judgment cache answers every call
that came back, so only the failed calls reach the judge). Pure library: the Prefect task adds a compute slot,
retries and run ids around `EvaluationStore`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from sip_core.evaluation.suite import RLMT_SETTINGS, compare, evaluate_model, heldout_rows, heldout_unsafe_rows
from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import ArtifactRef, Manifest
from sip_core.infra.run_context import RunContext
from sip_core.training import data
from sip_core.training.data import Rows


class ModelEvaluation(BaseModel):
    """One model's evaluation results (JSON dumps of the evaluation library's result models), its
    greedy continuations on the held-out prefixes, and where the artifact lives."""

    model: str
    uri: str
    results: dict[str, dict[str, Any]] = Field(default_factory=dict)
    continuations: list[str] = Field(default_factory=list)
    unsafe_continuations: list[str] = Field(default_factory=list, description="greedy, on the held-out unsafe "
                                            "prefixes (the unsafe win rate's and safety rate's texts)")
    seconds: dict[str, float] = Field(default_factory=dict)
    cached: bool = False
    judge_calls: int = 0
    failed_calls: dict[str, int] = Field(default_factory=dict, description="per suite: judge calls that failed "
                                         "(their results are computed from the rest and not committed)")

    @property
    def partial(self) -> bool:
        return bool(self.failed_calls)

    def payload(self) -> dict[str, Any]:
        """What the artifact's evaluation.json holds."""
        return self.model_dump(include={"model", "results", "continuations", "unsafe_continuations", "seconds"})


class PairComparison(BaseModel):
    """Win rate and coherence of model A's continuations against model B's."""

    a: str
    b: str
    judge_calls: int = 0
    results: dict[str, dict[str, Any]] = Field(default_factory=dict)
    failed_calls: dict[str, int] = Field(default_factory=dict, description="per result: judge calls that failed")

    @property
    def partial(self) -> bool:
        return bool(self.failed_calls)


def model_identity(ref: str, storage_options: dict[str, Any] | None = None) -> str:
    """A committed checkpoint's content hash, else the ref itself (a bundled or hub model)."""
    committed = artifacts.load_committed(ref, storage_options)
    return committed.content_hash if committed else ref


def heldout_thoughts(ctx: RunContext, thoughts: ArtifactRef | None, chunks: ArtifactRef) -> Rows:
    """(chunk_id, augmented_text) of the gated thought rows of held-out chunks: the thought-NLL
    evaluation's rows, never a row any recipe trained on. A thought artifact made from another
    split is an error, not an empty evaluation."""
    if thoughts is None:
        return Rows({"chunk_id": [], "augmented_text": []})
    so = ctx.storage_options
    manifest = thoughts.manifest(so)
    if manifest.config.get("split") != "heldout":
        raise ValueError(f"thought artifact {thoughts.uri} was made from the {manifest.config.get('split')} split: "
                         "thought NLL is measured on thoughts of held-out chunks (insert_thoughts split='heldout')")
    return data.gated_thoughts(manifest, None, so, data.chunk_ids(chunks.manifest(so), "heldout", so))


def _dumps(results: dict) -> dict[str, dict[str, Any]]:
    return {k: v.model_dump(mode="json") for k, v in results.items()}


class EvaluationStore:
    """Where one model's evaluations under `ctx` live: `load()` the committed result, or
    `evaluate()` and commit it."""

    def __init__(self, ctx: RunContext, model_ref: str, chunks: ArtifactRef, judge_id: str,
                 thoughts: ArtifactRef | None = None):
        cfg = ctx.cfg
        self.ctx, self.model_ref, self.chunks, self.thoughts = ctx, model_ref, chunks, thoughts
        self.uri = ctx.eval_uri({
            "model": model_identity(model_ref, ctx.storage_options), "eval": cfg.eval.model_dump(mode="json"),
            "rlmt": cfg.rlmt.model_dump(mode="json", include=RLMT_SETTINGS),
            "judge": judge_id, "judge_cfg": cfg.eval_judge.model_dump(mode="json", exclude={"api_key_block"}),
            "chunks": chunks.content_hash, "thoughts": thoughts.content_hash if thoughts else None})

    def load(self) -> ModelEvaluation | None:
        """The committed evaluation (a cache hit: no judge call), or None."""
        done = artifacts.load_committed(self.uri, self.ctx.storage_options)
        if done is None:
            return None
        payload = json.loads(store.read_bytes(done.files[0], self.ctx.storage_options))
        return ModelEvaluation(**payload, uri=self.uri, cached=True, judge_calls=0)

    def evaluate(self, judge, audit: dict | None) -> ModelEvaluation:
        """Run every configured evaluation with `judge`, commit the artifact unless a judge call
        failed (then it is returned partial and uncommitted, so a rerun asks the failed calls), return it."""
        so = self.ctx.storage_options
        chunk_manifest = self.chunks.manifest(so)
        texts = heldout_thoughts(self.ctx, self.thoughts, self.chunks).columns["augmented_text"]
        result = evaluate_model(self.ctx.cfg, self.model_ref, chunk_manifest, judge, audit, texts)
        evaluation = ModelEvaluation(model=self.model_ref, uri=self.uri, results=_dumps(result.results),
                                     continuations=result.continuations,
                                     unsafe_continuations=result.unsafe_continuations, seconds=result.seconds,
                                     judge_calls=judge.calls, failed_calls=result.failed_calls)
        if not evaluation.partial:
            self._commit(evaluation, chunk_manifest)
        return evaluation

    def _commit(self, evaluation: ModelEvaluation, chunk_manifest: Manifest) -> None:
        model = artifacts.load_committed(self.model_ref, self.ctx.storage_options)
        parents = [chunk_manifest] + ([model] if model else [])
        config = {"eval": self.ctx.cfg.eval.model_dump(mode="json"), "model": self.model_ref}
        artifacts.write_json_artifact(self.uri, "evaluation.json", evaluation.payload(),
                                      self.ctx.context(config, parents), kind="evaluation")


def compare_evaluations(ctx: RunContext, a: ModelEvaluation, b: ModelEvaluation, chunks: ArtifactRef, judge,
                        audit: dict | None) -> PairComparison:
    """Win rate and coherence of A's vs B's greedy continuations on the held-out prefixes, and the
    win rate on the held-out unsafe ones (judgments cached: a rerun of the same pair makes no calls
    but the ones that failed). Nothing is committed; failed calls are counted per result (`partial`)."""
    manifest = chunks.manifest(ctx.storage_options)
    rows, unsafe = heldout_rows(ctx.cfg, manifest), heldout_unsafe_rows(ctx.cfg, manifest)
    failed: dict[str, int] = {}
    results = compare(ctx.cfg, a, b, [r["prefix_text"] for r in rows], judge, audit, failed,
                      [r["prefix_text"] for r in unsafe])
    return PairComparison(a=a.model, b=b.model, judge_calls=judge.calls, results=_dumps(results),
                          failed_calls=failed)
