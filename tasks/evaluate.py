"""Evaluation tasks: one model's evaluations (a cached artifact, `EvaluationStore`), a pairwise
comparison, and the report. A rerun finds every result committed and calls no judge."""

from __future__ import annotations

from prefect import task

from sip_core.config import SipConfig
from sip_core.evaluation.store import EvaluationStore, ModelEvaluation, PairComparison, compare_evaluations
from sip_core.infra.artifacts import ArtifactRef
from sip_core.infra.run_context import RunContext
from sip_core.report.assemble import ReportRef, run_results, save_run_report
from tasks.llm_jobs import _llm
from tasks.runs import run_context
from tasks.slots import compute_slot


@task(name="evaluate-model", retries=1, retry_delay_seconds=10)
def evaluate_task(cfg: SipConfig, model: str | ArtifactRef, chunks: ArtifactRef, audit: dict | None,
                  thoughts: ArtifactRef | None = None) -> ModelEvaluation:
    """`model`: a model ref / checkpoint URI, or a training task's result; `thoughts`: thought
    data of held-out chunks (the thought-NLL rows). Runs in one of `lifecycle.parallel` slots."""
    judge = _llm(cfg, "eval_judge")
    evaluations = EvaluationStore(run_context(cfg), model.uri if isinstance(model, ArtifactRef) else model,
                                  chunks, judge.backend.model_id, thoughts)
    if (done := evaluations.load()) is not None:
        return done
    with compute_slot(cfg.lifecycle.parallel):
        return evaluations.evaluate(judge, audit)


@task(name="compare-models")
def compare_task(cfg: SipConfig, a: ModelEvaluation, b: ModelEvaluation, chunks: ArtifactRef,
                 audit: dict | None) -> PairComparison:
    """Win rate and coherence of A's vs B's greedy continuations (judgments cached: a rerun
    of the same pair makes no calls)."""
    return compare_evaluations(RunContext(cfg), a, b, chunks, _llm(cfg, "eval_judge"), audit)


@task(name="judge-agreement")
def agreement_task(cfg: SipConfig, pairs: list[tuple[ModelEvaluation, ModelEvaluation]],
                   chunks: ArtifactRef) -> dict:
    """Training judge vs evaluation judge on the same held-out pairs (every compared pair of
    models' continuations): suite "judge_agreement" {n, agree, rate, low, high, ...}. Judgments
    are cached: a rerun makes no calls."""
    from sip_core.evaluation.agreement import judge_agreement
    from sip_core.evaluation.suite import heldout_rows

    rows = heldout_rows(cfg, chunks.manifest(cfg.run.storage_options))
    prefixes, conts_a, conts_b = [], [], []
    for a, b in pairs:
        k = min(len(rows), len(a.continuations), len(b.continuations))
        prefixes += [r["prefix_text"] for r in rows[:k]]
        conts_a += a.continuations[:k]
        conts_b += b.continuations[:k]
    result = judge_agreement(_llm(cfg, "judge"), cfg.judge, _llm(cfg, "eval_judge"), cfg.eval_judge, prefixes,
                             conts_a, conts_b, cfg.eval.judge_seeds)
    return result.model_dump(mode="json")


@task(name="report")
def report_task(cfg: SipConfig, preset: str | None, arms: dict[str, list[tuple[str, ArtifactRef]]],
                evaluations: dict[str, ModelEvaluation], comparisons: list[tuple[str, str, PairComparison]],
                audit: dict | None, parents: list[str], judges: dict | None = None) -> ReportRef:
    """The run report (`run_results`), saved with the checkpoints in `parents` (URIs) as its lineage.
    `judges`: {"roles": judge_roles(cfg), "audits": {"training", "evaluation"}, "judge_agreement": {...}}."""
    ctx = run_context(cfg)
    return save_run_report(ctx, run_results(ctx, preset, arms, evaluations, comparisons, audit, judges), parents)
