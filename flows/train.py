"""Training flows: `pretrain` (self-improving pretraining or a control) and `midtrain`
(thinking SFT, then RLMT). Data prep, thoughts and the judge audit are shared, cached stages."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.llm_jobs import thoughts
from flows.prepare import prepare
from sip_core.config import MidtrainParams, PretrainParams, SipConfig, ThoughtParams
from sip_core.infra.artifacts import ArtifactRef
from sip_core.report.assemble import metrics_rows
from sip_core.training import JudgeGateFailed
from tasks.llm_jobs import audit_task
from tasks.train import TrainResult, pretrain_task, rlmt_task, sft_task


def judge_gate(cfg: SipConfig, chunks: ArtifactRef, calls: list[int] | None = None) -> dict | None:
    """Audit the judge before training against it (cached: a rerun makes no calls) and return
    the audit report. With judge.gate=enforce a failed audit stops the run; with warn it is
    logged and reported. `calls`, when given, receives the judge calls the audit made."""
    if cfg.judge.gate == "off":
        return None
    out = audit_task(cfg, chunks)
    if calls is not None:
        calls.append(out.calls)
    report = out.report
    if not report["passed"]:
        message = f"judge {report['judge']} failed its audit: {'; '.join(report['reasons'])}"
        if cfg.judge.gate == "enforce":
            raise JudgeGateFailed(message)
        get_run_logger().warning("%s (judge.gate=warn: training anyway)", message)
    return report


def publish_metrics(result: TrainResult, key: str, cfg: SipConfig) -> None:
    rows = metrics_rows(result, cfg.run.storage_options, digits=4)
    if rows is not None:
        create_table_artifact(rows, key=key, description=f"per-step metrics of {result.uri}")


@flow(name="pretrain", log_prints=True)
def pretrain(params: PretrainParams = PretrainParams()) -> dict:
    """Self-improving pretraining (Online DPO over {original, rewrite, K rollouts}) or a control:
    rf_nll (NLL on the best candidate) or ntp (the next-token baseline)."""
    cfg = params.load()
    if params.objective:
        cfg.pretrain.objective = params.objective
    chunks = prepare(cfg)["chunks"]
    audit = judge_gate(cfg, chunks) if cfg.pretrain.objective != "ntp" else None
    out = pretrain_task(cfg, chunks)
    publish_metrics(out, f"pretrain-{cfg.pretrain.objective}-metrics".replace("_", "-"), cfg)
    print(f"pretrain ({cfg.pretrain.objective}): {cfg.pretrain.steps} steps -> {out.uri}")
    return {"pretrain": out, "chunks": chunks, "audit": audit}


@flow(name="midtrain", log_prints=True)
def midtrain(params: MidtrainParams = MidtrainParams()) -> dict:
    """Thinking mid-training: SFT on the thought data's SFT half, then RLMT on its RL half."""
    cfg = params.load()
    chunks = prepare(cfg)["chunks"]
    thought_data = thoughts(ThoughtParams(config_file=params.config_file, overrides=params.overrides, limit=None))
    out: dict = {"chunks": chunks, "thoughts": thought_data}
    init = params.init
    if params.stage in ("sft", "both"):
        cfg.sft.init = init
        out["sft"] = sft_task(cfg, thought_data)
        publish_metrics(out["sft"], "sft-metrics", cfg)
        init = out["sft"].uri
    if params.stage in ("rlmt", "both"):
        out["audit"] = judge_gate(cfg, chunks)
        cfg.rlmt.init = init
        out["rlmt"] = rlmt_task(cfg, chunks, thought_data)
        publish_metrics(out["rlmt"], "rlmt-metrics", cfg)
    print("midtrain: " + ", ".join(f"{k} -> {out[k].uri}" for k in ("sft", "rlmt") if k in out))
    return out
