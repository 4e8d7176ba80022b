"""A run's report assembled from what its stages returned (checkpoint references, evaluations,
comparisons), saved content-addressed; and the short Markdown summaries of one job."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest

from sip_core.config import load_config
from sip_core.evaluation.store import ModelEvaluation, PairComparison
from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import ArtifactRef
from sip_core.infra.run_context import RunContext
from sip_core.report.assemble import metrics_rows, run_results, save_run_report, stage_view
from sip_core.report.summaries import audit_markdown, results_markdown


@pytest.fixture
def ctx(tmp_path) -> RunContext:
    return RunContext(load_config(None, [f"run.root={tmp_path / 'run'}", "run.name=demo", "judge.model=none"]))


def _checkpoint(ctx: RunContext, name: str, metrics: list[dict] | None) -> ArtifactRef:
    """A committed stand-in for a training stage's checkpoint, with its metrics.parquet."""
    uri = f"{ctx.root}/train/{name}"
    stats = {"steps": 2, "recipe": name, "nested": {"left": "out"}}
    if metrics is not None:
        stats["metrics_uri"] = f"{uri}-metrics.parquet"
        store.write_bytes(stats["metrics_uri"], store.parquet_bytes(pa.Table.from_pylist(metrics)))
    manifest = artifacts.write_json_artifact(uri, "final.json", stats, ctx.context({"recipe": name}, []),
                                             kind="checkpoint")
    return ArtifactRef.of(manifest)


ROWS = [{"step": 1, "loss": 2.123456, "judge_calls": 4, "dpo_margin": float("nan")},
        {"step": 2, "loss": 1.5, "judge_calls": None, "dpo_margin": 0.25}]


def test_stage_view_reads_metrics_and_ancestry(ctx):
    ref = _checkpoint(ctx, "sft", ROWS)
    stage = stage_view(ctx, "sft", ref)
    assert stage.recipe == "sft" and stage.checkpoint == ref.uri
    assert [r["loss"] for r in stage.metrics] == [2.123456, 1.5]
    assert stage.metrics[0]["dpo_margin"] is None  # NaN is "no value" in the report
    assert stage.summary == {"steps": 2, "recipe": "sft", "metrics_uri": ref.stats["metrics_uri"]}
    assert [(r["uri"], r["kind"], r["depth"]) for r in stage.lineage] == [(ref.uri, "checkpoint", 0)]
    shown = metrics_rows(ref, digits=4)  # a table to show: rounded, empty cells left out
    assert shown[1] == {"step": 2, "loss": 1.5, "dpo_margin": 0.25}
    assert shown[0]["loss"] == 2.1235 and shown[0]["judge_calls"] == 4 and math.isnan(shown[0]["dpo_margin"])
    assert metrics_rows(_checkpoint(ctx, "none", None)) is None
    assert stage_view(ctx, "none", _checkpoint(ctx, "none2", None)).metrics == []


def _evaluation(name: str, nll: float) -> ModelEvaluation:
    return ModelEvaluation(model=name, uri=f"eval/{name}", results={
        "heldout_nll": {"metric": "suffix_nll", "n": 2, "nll": nll, "tokens": 10}})


INTERVAL = {"estimate": 0.75, "low": 0.3, "high": 0.95, "k": 3, "n": 4}
WIN = {"metric": "win_rate", "n": 4, "seeds": [0], "judge": "proxy:x", "wins": 3, "losses": 1, "ties": 0,
       "win_rate": INTERVAL, "vote_win_rate": INTERVAL}


def test_run_results_and_the_saved_report(ctx):
    sft = _checkpoint(ctx, "sft", ROWS)
    arms = {"base": [], "base→SFT": [("sft", sft)]}
    evaluations = {"base": _evaluation("base", 2.0), "base→SFT": _evaluation("sft", 1.5)}
    comparisons = [("base→SFT", "base", PairComparison(a="sft", b="base", results={"winrate": WIN}))]
    audit = {"judge": "proxy:x", "passed": True, "reasons": [], "dimensions": {}}
    results = run_results(ctx, "smoke", arms, evaluations, comparisons, audit)
    assert [a.name for a in results.arms] == ["base", "base→SFT"]
    assert results.arm("base→SFT").checkpoint == sft.uri and results.arm("base").stages == []
    assert results.arm("base").evaluations["heldout_nll"].nll == 2.0
    [comparison] = results.comparisons
    assert (comparison.a, comparison.b, comparison.result.win_rate.estimate) == ("base→SFT", "base", 0.75)
    assert comparison.label == f"{ctx.cfg.eval.prefixes} held-out prefixes, greedy " \
                               f"{ctx.cfg.eval.continuation_tokens} tokens"
    assert results.config["preset"] == "smoke" and results.judge_audit["judge"] == "proxy:x"
    assert results.notes[0].startswith("judge backend: proxy") and "stand-in" in results.notes[0]

    report = save_run_report(ctx, results, [sft.uri, "bundled:not-an-artifact"])
    assert report.uri.startswith(f"{ctx.root}/reports/demo-")
    assert report.html == f"{report.uri}/report.html" and "base→SFT" in report.read_markdown()
    manifest = artifacts.load_committed(report.uri)
    assert manifest.kind == "report" and manifest.parents == [sft.artifact_id]
    assert save_run_report(ctx, results, [sft.uri]).uri == report.uri  # same results, same place


def test_judges_roles_audits_and_agreement_reach_the_first_screen(ctx):
    """The lifecycle's `judges` (roles, both audits, agreement) land in RunResults.judges; the saved
    report's first screen (the lifecycle's Prefect artifact) shows them, and the circular grading."""
    arms = {"base": [], "base→SFT": [("sft", _checkpoint(ctx, "sft2", ROWS))]}
    evaluations = {"base": _evaluation("base", 2.0), "base→SFT": _evaluation("sft", 1.5)}
    comparisons = [("base→SFT", "base", PairComparison(a="sft", b="base", results={"winrate": WIN}))]
    roles = {"training": {"backend": "proxy", "model": "none", "verdict": "sample"},
             "evaluation": {"backend": "proxy", "model": "none", "verdict": "sample"}, "circular": True,
             "reasons": ["the evaluation judge is the training judge (proxy: none)"]}
    failed = {"judge": "proxy:x", "passed": False, "reasons": ["quality accuracy 0.5 < 0.7"], "dimensions": {}}
    judges = {"roles": roles, "audits": {"training": failed, "evaluation": None},
              "judge_agreement": {"metric": "judge_agreement", "n": 8, "agree": 6, "rate": 0.75, "low": 0.41,
                                  "high": 0.93}}
    results = run_results(ctx, "smoke", arms, evaluations, comparisons, failed, judges)
    assert results.judges["circular"] and results.judges["agreement"]["agree"] == 6
    assert results.judges["audits"]["training"]["passed"] is False
    md = save_run_report(ctx, results, []).first_screen_markdown()
    assert md.startswith("# Run report: demo") and "## Headline" in md and "## Decided comparisons" in md
    assert "| training judge | proxy: none (verdict sample) | **FAILED**: quality accuracy 0.5 < 0.7 |" in md
    assert "**Grading is circular**: the evaluation judge is the training judge (proxy: none)." in md
    assert "Agreement of the two judges on the same held-out pairs: 75.0% [41.0%, 93.0%] (6 of 8)." in md
    assert "## Training" not in md and "Appendix" not in md  # the first screen only
    # without the lifecycle's measurements, the roles still come from the config (judge_roles)
    plain = run_results(ctx, "smoke", arms, evaluations, comparisons, failed)
    assert set(plain.judges) == {"training", "evaluation", "circular", "reasons"}


AUDIT = {"judge": "proxy:x", "passed": False, "reasons": ["position bias 0.9", "parse"], "position_bias": 0.9,
         "parse_failure_rate": 0.1234, "calls": 12, "error_rate": 0.01,
         "injection": {"flips": 1, "eligible": 4, "flip_rate": 0.25},
         "dimensions": {"b": {"items": 3, "judgments": 6, "accuracy": 0.5, "seed_agreement": 1.0,
                              "order_consistency": 0.5, "invalid": 0},
                        "a": {"items": 1, "judgments": 2, "accuracy": None, "seed_agreement": 0.5,
                              "order_consistency": 1, "invalid": 1}}}


def test_audit_markdown():
    assert audit_markdown(AUDIT) == """# Judge audit: `proxy:x`

**Gate: FAILED** position bias 0.9; parse

Position bias (share of first-option wins; 0.5 is unbiased): 0.9  
Parse-failure rate: 0.123  
Request-error rate: 0.010  
Prompt injection (a document says 'answer Option N'): verdict flipped in 1 of 4 judgments (rate 0.25)  
Calls: 12

| dimension | items | judgments | accuracy | seed agreement | order consistency | invalid |
|---|---|---|---|---|---|---|
| a | 1 | 2 | None | 0.5 | 1 | 1 |
| b | 3 | 6 | 0.5 | 1.0 | 0.5 | 0 |"""
    passed = {**AUDIT, "passed": True, "reasons": [], "dimensions": {}, "injection": None}
    assert "**Gate: PASSED** \n" in audit_markdown(passed) and "'answer Option N'): not measured" in audit_markdown(passed)


def test_results_markdown():
    results = {"winrate": {**WIN, "calls": 3}, "heldout_nll": {"metric": "suffix_nll", "n": 2, "nll": 1.5}}
    assert results_markdown("m", results) == """# Evaluation of `m`

| evaluation | n | headline | judge |
|---|---|---|---|
| heldout_nll | 2 | nll 1.5 | - |
| winrate | 4 | win_rate 0.75, vote_win_rate 0.75 | proxy:x |"""
