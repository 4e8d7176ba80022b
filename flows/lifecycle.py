"""lifecycle: the replication's two-lineage comparison plus the control, end to end.

    base -> thinking SFT -> RLMT
    base -> self-improving pretraining -> thinking SFT -> RLMT
    base -> next-token baseline
Data prep, rewrites, thoughts and the judge audit are shared. Every arm (and the base model) is
evaluated, the arms are compared pairwise, and one report compares them all. Every stage is
content-addressed, so a rerun reuses each finished stage and repeats no judge call; a failed
stage is retried alone (task retries resume training from the last checkpoint).
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flows.llm_jobs import heldout_thoughts
from flows.prepare import prepare
from flows.train import judge_gate, publish_metrics
from sip_core.config import LifecycleParams, SipConfig
from sip_core.infra.artifacts import ArtifactRef
from sip_core.infra.models import torch_threads
from sip_core.report.assemble import ReportRef
from tasks.evaluate import compare_task, evaluate_task, report_task
from tasks.llm_jobs import ThoughtsResult, rewrite_task, thoughts_task
from tasks.slots import threads_per_slot
from tasks.train import pretrain_task, rlmt_task, sft_task

BASE, SIP_ARM, NTP_ARM = "base→SFT→RLMT", "base→SIP→SFT→RLMT", "base→NTP"
PAIRS = [(SIP_ARM, BASE), ("base→SIP", NTP_ARM), ("base→SIP", "base"), (NTP_ARM, "base")]
PUBLISHED = ("sip", "ntp", "base-rlmt", "sip-rlmt")  # the stages whose metrics become Prefect tables


def _rewrites_missing(cfg: SipConfig, chunks: ArtifactRef) -> int:
    """Rewrites still to make: a rerun sends none, a call that failed is sent again."""
    from sip_core.augment.rewrites import answered_chunk_ids
    from sip_core.infra.run_context import RunContext

    answered = answered_chunk_ids(RunContext(cfg), chunks.manifest(cfg.run.storage_options))
    return max(0, cfg.lifecycle.rewrite_limit - len(answered))


def shared_stages(cfg: SipConfig, chunks: ArtifactRef, calls: dict[str, int]
                  ) -> tuple[dict | None, ThoughtsResult, ThoughtsResult | None]:
    """The judge audit, the rewrites still missing, the thought data of train chunks (the recipes')
    and of a few held-out chunks (the evaluation's thought NLL): what every arm shares."""
    audit_calls: list[int] = []
    audit = judge_gate(cfg, chunks, audit_calls)
    calls["audit"] = sum(audit_calls)
    if missing := _rewrites_missing(cfg, chunks):
        calls["rewrite"] = rewrite_task(cfg, chunks, missing, "train").calls
    thoughts = thoughts_task(cfg, chunks, cfg.lifecycle.thought_limit, "exact")
    heldout = heldout_thoughts(cfg, chunks)
    calls["thoughts"] = thoughts.calls + (heldout.calls if heldout else 0)
    return audit, thoughts, heldout


def submit_training(cfg: SipConfig, chunks: ArtifactRef, thoughts: ThoughtsResult) -> dict:
    """Every training stage, submitted in dependency order (futures, by stage name)."""
    sip = pretrain_task.submit(cfg.replace({"pretrain.objective": "dpo"}), chunks)
    ntp = pretrain_task.submit(cfg.replace({"pretrain.objective": "ntp"}), chunks)
    base_sft = sft_task.submit(cfg, thoughts)
    base_rlmt = rlmt_task.submit(cfg, chunks, thoughts, base_sft)
    sip_sft = sft_task.submit(cfg, thoughts, sip)
    sip_rlmt = rlmt_task.submit(cfg, chunks, thoughts, sip_sft)
    return {"sip": sip, "ntp": ntp, "base-sft": base_sft, "base-rlmt": base_rlmt, "sip-sft": sip_sft,
            "sip-rlmt": sip_rlmt}


def arm_stages(stage: dict) -> dict[str, list[tuple[str, object]]]:
    """Each arm's (recipe, stage) pairs in training order; the base model has none."""
    return {"base": [], BASE: [("sft", stage["base-sft"]), ("rlmt", stage["base-rlmt"])],
            SIP_ARM: [("pretrain-dpo", stage["sip"]), ("sft", stage["sip-sft"]), ("rlmt", stage["sip-rlmt"])],
            NTP_ARM: [("pretrain-ntp", stage["ntp"])], "base→SIP": [("pretrain-dpo", stage["sip"])]}


def publish_report(cfg: SipConfig, report: ReportRef) -> None:
    create_markdown_artifact(report.read_markdown(cfg.run.storage_options), key="lifecycle-report",
                             description=f"lifecycle report {report.uri}")
    create_link_artifact(report.html, key="lifecycle-report-html", link_text="report.html")


@flow(name="lifecycle", log_prints=True)
def lifecycle(params: LifecycleParams = LifecycleParams()) -> dict:
    started = time.perf_counter()
    cfg = params.load()
    chunks = prepare(cfg)["chunks"]
    calls: dict[str, int] = {}
    audit, thoughts, heldout = shared_stages(cfg, chunks, calls)

    # The arms train, and the five models are evaluated, as their inputs are ready: up to
    # lifecycle.parallel stages at once (tasks/slots.py).
    with torch_threads(threads_per_slot(cfg.lifecycle.parallel)):  # evaluations run in this process
        training = submit_training(cfg, chunks, thoughts)
        evaluations = {name: evaluate_task.submit(cfg, stages[-1][1] if stages else cfg.model.policy, chunks, audit,
                                                  heldout) for name, stages in arm_stages(training).items()}
        trained = {name: f.result() for name, f in training.items()}
        evals = {name: f.result() for name, f in evaluations.items()}
    calls["training"] = sum(r.judge_calls for r in trained.values())
    for name in PUBLISHED:
        publish_metrics(trained[name], f"{name}-metrics", cfg)
    arms = arm_stages(trained)
    comparisons = [(a, b, compare_task(cfg, evals[a], evals[b], chunks, audit)) for a, b in PAIRS]
    report = report_task(cfg, params.preset, arms, evals, comparisons, audit, [trained[k].uri for k in PUBLISHED])
    calls["evaluation"] = sum(e.judge_calls for e in evals.values()) + sum(c.judge_calls for _, _, c in comparisons)
    publish_report(cfg, report)
    finals = {name: stages[-1][1].uri if stages else cfg.model.policy for name, stages in arms.items()}
    return summarize(report, time.perf_counter() - started, calls, finals, list(trained.values()), evals)


def summarize(report: ReportRef, seconds: float, calls: dict[str, int], finals: dict[str, str], trained: list,
              evals: dict) -> dict:
    """Log and print what the run did; the flow's result."""
    judge_calls = sum(calls.values())
    reused, cached = sum(r.reused for r in trained), sum(e.cached for e in evals.values())
    get_run_logger().info("lifecycle finished in %.0fs; model calls this run: %s", seconds, calls)
    print(f"lifecycle: report -> {report.html} (markdown {report.markdown}); {seconds:.0f}s, "
          f"{judge_calls} model calls ({', '.join(f'{k} {v}' for k, v in calls.items())}); "
          f"{reused}/{len(trained)} training stages reused, {cached}/{len(evals)} evaluations cached")
    return {"report": report, "seconds": seconds, "judge_calls": judge_calls, "calls": calls, "finals": finals,
            "reused_stages": reused, "cached_evals": cached}
