"""Evaluation tasks: one model's evaluations (cached as an artifact keyed by model, eval config,
judge and data), and the report. A rerun finds every result committed and calls no judge."""

from __future__ import annotations

import hashlib
import json

from prefect import task

from sip_core.infra import artifacts, store
from sip_core.config import SipConfig
from sip_core.evaluation.suite import ModelEval, evaluate_model
from sip_core.infra.run_context import RunContext
from tasks.llm_jobs import _llm, provenance
from tasks.slots import compute_slot


def model_identity(ref: str, cfg: SipConfig) -> str:
    committed = artifacts.load_committed(ref, cfg.run.storage_options)
    return committed.content_hash if committed else ref


def eval_uri(cfg: SipConfig, ref: str, chunks: dict, judge_id: str, thoughts: dict | None) -> str:
    key = json.dumps({"model": model_identity(ref, cfg), "eval": cfg.eval.model_dump(mode="json"), "judge": judge_id,
                      "judge_cfg": cfg.judge.model_dump(mode="json", exclude={"api_key_block"}),
                      "chunks": chunks["content_hash"], "thoughts": thoughts and thoughts["content_hash"],
                      "code": artifacts.code_version()}, sort_keys=True)
    return store.join(store.normalize(cfg.run.root), "eval", hashlib.sha256(key.encode()).hexdigest()[:16])


def thought_texts(cfg: SipConfig, thoughts: dict | None) -> list[str]:
    if not thoughts:
        return []
    from sip_core.recipes.sft import thought_rows

    return thought_rows(artifacts.load_manifest(thoughts["uri"], cfg.run.storage_options), "rl", cfg.run.storage_options)


@task(name="evaluate-model", retries=1, retry_delay_seconds=10)
def evaluate_task(cfg: SipConfig, model: str | dict, chunks: dict, audit: dict | None,
                  thoughts: dict | None = None) -> dict:
    """`model`: a model ref / checkpoint URI, or a training task's result. Runs in one of
    `lifecycle.parallel` slots."""
    model_ref = model["uri"] if isinstance(model, dict) else model
    judge = _llm(cfg, "judge")
    uri = eval_uri(cfg, model_ref, chunks, judge.backend.model_id, thoughts)
    if done := artifacts.load_committed(uri, cfg.run.storage_options):
        payload = json.loads(store.read_bytes(done.files[0], cfg.run.storage_options))
        return {**payload, "uri": uri, "cached": True, "judge_calls": 0}
    chunk_manifest = artifacts.load_manifest(chunks["uri"], cfg.run.storage_options)
    with compute_slot(cfg.lifecycle.parallel):
        result: ModelEval = evaluate_model(cfg, model_ref, chunk_manifest, judge, audit, thought_texts(cfg, thoughts))
    payload = {"model": model_ref, "results": {k: v.model_dump(mode="json") for k, v in result.results.items()},
               "continuations": result.continuations, "seconds": result.seconds}
    env = RunContext(cfg, provenance())
    parents = [chunk_manifest] + ([m] if (m := artifacts.load_committed(model_ref, cfg.run.storage_options)) else [])
    artifacts.write_json_artifact(uri, "evaluation.json", payload, env.context({"eval": cfg.eval.model_dump(mode="json"),
                                                                               "model": model_ref}, parents),
                                  kind="evaluation")
    return {**payload, "uri": uri, "cached": False, "judge_calls": judge.calls}


@task(name="compare-models")
def compare_task(cfg: SipConfig, a: dict, b: dict, chunks: dict, audit: dict | None) -> dict:
    """Win rate and coherence of A's vs B's greedy continuations (judgments cached: a rerun
    of the same pair makes no calls)."""
    from types import SimpleNamespace

    from sip_core.evaluation.suite import compare, heldout_rows

    judge = _llm(cfg, "judge")
    rows = heldout_rows(cfg, artifacts.load_manifest(chunks["uri"], cfg.run.storage_options))
    results = compare(cfg, SimpleNamespace(continuations=a["continuations"]),
                      SimpleNamespace(continuations=b["continuations"]), [r["prefix_text"] for r in rows], judge, audit)
    return {"a": a["model"], "b": b["model"], "judge_calls": judge.calls,
            "results": {k: v.model_dump(mode="json") for k, v in results.items()}}


def stage_view(cfg: SipConfig, recipe: str, result: dict) -> dict:
    """A training stage as the report shows it: checkpoint, per-step metrics, ancestry."""
    so = cfg.run.storage_options
    metrics_uri = result["stats"].get("metrics_uri")
    metrics = store.read_parquet(metrics_uri, so).to_pylist() if metrics_uri and store.exists(metrics_uri, so) else []
    lineage = RunContext(cfg).lineage().ancestry(result["uri"])
    lineage = [{k: r[k] for k in ("uri", "kind", "depth") if k in r} for r in lineage]
    return {"recipe": recipe, "checkpoint": result["uri"], "metrics": metrics, "lineage": lineage,
            "summary": {k: v for k, v in result["stats"].items() if not isinstance(v, (dict, list))}}


@task(name="report")
def report_task(cfg: SipConfig, results: dict, parents: list[str]) -> dict:
    from sip_core.report import RunResults, save_report

    env = RunContext(cfg, provenance())
    manifests = [m for uri in parents if (m := artifacts.load_committed(uri, cfg.run.storage_options))]
    run = RunResults.model_validate(results)
    key = hashlib.sha256(json.dumps(results, sort_keys=True, default=str).encode()).hexdigest()[:16]
    uri = store.join(store.normalize(cfg.run.root), "reports", f"{cfg.run.name}-{key}")
    manifest = save_report(run, uri, cfg.run.storage_options, env.context({"run": cfg.run.name}, manifests))
    return {"uri": manifest.uri, "html": store.join(manifest.uri, "report.html"),
            "markdown": store.join(manifest.uri, "report.md")}
