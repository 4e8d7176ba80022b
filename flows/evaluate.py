"""evaluate: one model's evaluations (and optionally its win rate against a second model)."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.llm_jobs import heldout_thoughts
from flows.prepare import prepare
from flows.train import judge_gate
from sip_core.config import EvaluateParams
from sip_core.judge.independence import as_training_judge
from sip_core.report.summaries import results_markdown
from tasks.evaluate import compare_task, evaluate_task


@flow(name="evaluate", log_prints=True)
def evaluate(params: EvaluateParams = EvaluateParams()) -> dict:
    """{"model": ModelEvaluation, and with `against`: "against": ModelEvaluation, "comparison": PairComparison}."""
    cfg = params.load()
    chunks = prepare(cfg)["chunks"]
    audit = judge_gate(as_training_judge(cfg, "eval_judge"), chunks)  # the judge these evaluations use
    thoughts = heldout_thoughts(cfg, chunks)
    a = evaluate_task(cfg, params.model, chunks, audit, thoughts)
    out = {"model": a}
    create_markdown_artifact(results_markdown(params.model, a.results), key="evaluation")
    if params.against:
        b = evaluate_task(cfg, params.against, chunks, audit, thoughts)
        out["against"] = b
        out["comparison"] = compare_task(cfg, a, b, chunks, audit)
        wr = out["comparison"].results.get("winrate", {})
        print(f"win rate of {params.model} vs {params.against}: {wr.get('win_rate')} (n={wr.get('n')})")
    print(f"evaluate: {len(a.results)} evaluations of {params.model} -> {a.uri}")
    return out
