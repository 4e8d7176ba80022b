"""lifecycle: the replication's two-lineage comparison plus the control, end to end.

lifecycle.setting thinking (the default):
    base -> thinking SFT -> RLMT
    base -> self-improving pretraining -> thinking SFT -> RLMT
    base -> next-token baseline
lifecycle.setting safety (METHOD Table 1's safety row; configs/lifecycle-safety-tiny.yaml):
    base -> next-token baseline on pretrain.data (the unsafe partition)
    base -> SIP(safety) on the same chunks, the rewriter's rewrite in every candidate pool
Data prep, rewrites, thoughts and the judge audits are shared. With lifecycle.train_judge the judge
is trained first (sip train-judge) and SIP and RLMT train against it; with lifecycle.train_rewriter
the rewriter is trained first (sip train-rewriter) and rewrites. Every arm (and the base
model) is evaluated by the evaluation judge (eval_judge), the arms are compared pairwise, both
judges grade the same held-out pairs (judge_agreement), and one report compares them all, saying
when the grading is circular (sip_core/judge/independence.py). Every stage is
content-addressed, so a rerun reuses each finished stage and repeats no judge call; a failed
stage is retried alone (task retries resume training from the last checkpoint).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from flows.llm_jobs import heldout_thoughts
from flows.prepare import prepare
from flows.train import judge_gate, publish_metrics
from sip_core.config import LifecycleParams, SipConfig
from sip_core.infra.artifacts import ArtifactRef
from sip_core.infra.models import torch_threads
from sip_core.report.assemble import ReportRef
from sip_core.judge.independence import as_training_judge, judge_roles
from tasks.evaluate import agreement_task, compare_task, evaluate_task, report_task
from tasks.llm_jobs import ThoughtsResult, rewrite_task, thoughts_task
from tasks.slots import threads_per_slot
from tasks.train import pretrain_task, rlmt_task, sft_task

BASE, SIP_ARM, NTP_ARM = "base→SFT→RLMT", "base→SIP→SFT→RLMT", "base→NTP"
PAIRS = [(SIP_ARM, BASE), ("base→SIP", NTP_ARM), ("base→SIP", "base"), (NTP_ARM, "base")]
PUBLISHED = ("sip", "ntp", "base-rlmt", "sip-rlmt")  # the stages whose metrics become Prefect tables


def _rewrites_missing(cfg: SipConfig, chunks: ArtifactRef) -> int:
    """Rewrites still to make among the chunks pretraining reads (pretrain.data), at most
    lifecycle.rewrite_limit in all: a rerun sends none, a call that failed is sent again."""
    from sip_core.augment.rewrites import answered_chunk_ids
    from sip_core.infra.run_context import RunContext
    from sip_core.training.data import read_chunk_rows

    so = cfg.run.storage_options
    manifest = chunks.manifest(so)
    # an unparseable rewrite counts as answered here (a lifecycle rerun calls nothing); `sip rewrite` retries it
    answered = answered_chunk_ids(RunContext(cfg), manifest, retry_unparseable=False)
    read = set(read_chunk_rows(manifest, "train", so, ["chunk_id"], cfg.pretrain.data).columns["chunk_id"])
    return max(0, min(cfg.lifecycle.rewrite_limit, len(read)) - len(answered & read))


def trained_judge(cfg: SipConfig, chunks: ArtifactRef) -> SipConfig:
    """With lifecycle.train_judge: train the judge (cached: a rerun reuses the checkpoint), and
    return the config whose training judge is that checkpoint (its card sets the prompts and the
    verdict mode), audited with gate enforce on the dimensions training asks it about
    (training_dimensions). The evaluation judge stays eval_judge."""
    if not cfg.lifecycle.train_judge:
        return cfg
    from sip_core.training.checkpoint import local_copy
    from tasks.train_judge import train_judge_task

    out = train_judge_task(cfg, chunks)
    folder = local_copy(out.uri, cfg.run.storage_options)
    from sip_core.judge.independence import training_dimensions

    return cfg.replace({"judge.backend": "local", "judge.model": folder, "judge.gate": "enforce",
                        "judge.gate_dimensions": training_dimensions(cfg)})


def trained_rewriter(cfg: SipConfig, chunks: ArtifactRef) -> SipConfig:
    """With lifecycle.train_rewriter: train the rewriter (cached) and return the config whose
    rewriter is that checkpoint, run in-process (its card sets the prompt)."""
    if not cfg.lifecycle.train_rewriter:
        return cfg
    from sip_core.training.checkpoint import local_copy
    from tasks.train_rewriter import train_rewriter_task

    out = train_rewriter_task(cfg, chunks)
    return cfg.replace({"rewriter.backend": "local",
                        "rewriter.model": local_copy(out.uri, cfg.run.storage_options)})


def shared_stages(cfg: SipConfig, chunks: ArtifactRef, calls: dict[str, int], thoughts_needed: bool = True
                  ) -> tuple[dict[str, dict | None], ThoughtsResult | None, ThoughtsResult | None]:
    """The audits of both judges (training, evaluation), the rewrites still missing, the thought
    data of train chunks (the recipes') and of a few held-out chunks (the evaluation's thought
    NLL): what every arm shares. A setting whose arms need no thoughts gets none."""
    audit_calls: list[int] = []
    audits = {"training": judge_gate(cfg, chunks, audit_calls),
              "evaluation": judge_gate(as_training_judge(cfg, "eval_judge"), chunks, audit_calls)}
    calls["audit"] = sum(audit_calls)
    if missing := _rewrites_missing(cfg, chunks):
        calls["rewrite"] = rewrite_task(cfg, chunks, missing, "train").calls
    if not thoughts_needed:
        return audits, None, None
    thoughts = thoughts_task(cfg, chunks, cfg.lifecycle.thought_limit, "exact")
    heldout = heldout_thoughts(cfg, chunks)
    calls["thoughts"] = thoughts.calls + (heldout.calls if heldout else 0)
    return audits, thoughts, heldout


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


def submit_safety(cfg: SipConfig, chunks: ArtifactRef, thoughts: ThoughtsResult | None) -> dict:
    """NTP and SIP(safety), both on pretrain.data (the preset's unsafe partition)."""
    return {"sip": pretrain_task.submit(cfg.replace({"pretrain.objective": "dpo"}), chunks),
            "ntp": pretrain_task.submit(cfg.replace({"pretrain.objective": "ntp"}), chunks)}


SAFE_SIP = "base→SIP(safety)"


def safety_arms(stage: dict) -> dict[str, list[tuple[str, object]]]:
    return {"base": [], NTP_ARM: [("pretrain-ntp", stage["ntp"])], SAFE_SIP: [("pretrain-dpo", stage["sip"])]}


@dataclass(frozen=True)
class Setting:
    """What a lifecycle trains and compares."""

    submit: Callable[[SipConfig, ArtifactRef, ThoughtsResult | None], dict]  # its training stages (futures)
    arms: Callable[[dict], dict[str, list[tuple[str, object]]]]  # each arm's (recipe, stage) pairs
    pairs: list[tuple[str, str]]  # the arms compared pairwise (A, B)
    published: tuple[str, ...]  # the stages whose metrics become Prefect tables
    thoughts: bool  # whether its arms train on the teacher's thoughts


SETTINGS = {"thinking": Setting(submit_training, arm_stages, PAIRS, PUBLISHED, True),
            "safety": Setting(submit_safety, safety_arms, [(SAFE_SIP, "base"), (NTP_ARM, "base"), (SAFE_SIP, NTP_ARM)],
                              ("sip", "ntp"), False)}


def check_training_data(cfg: SipConfig, chunks: ArtifactRef) -> None:
    """pretrain.data must select enough train chunks (PartitionTooSmall: one line with the counts,
    exit 2), checked before any judge, rewriter or teacher is called."""
    from sip_core.training.data import check_partition

    check_partition(chunks.manifest(cfg.run.storage_options), cfg.pretrain, cfg.run.storage_options)


def publish_report(cfg: SipConfig, report: ReportRef) -> None:
    """The Prefect artifact shows the report's first screen (identity, Judges box, headline);
    the whole report is the linked HTML."""
    create_markdown_artifact(report.first_screen_markdown(cfg.run.storage_options), key="lifecycle-report",
                             description=f"lifecycle report {report.uri} (first screen; the whole report: the link)")
    create_link_artifact(report.html, key="lifecycle-report-html", link_text="report.html")


@flow(name="lifecycle", log_prints=True)
def lifecycle(params: LifecycleParams = LifecycleParams()) -> dict:
    started = time.perf_counter()
    cfg = params.load()
    setting = SETTINGS[cfg.lifecycle.setting]
    chunks = prepare(cfg)["chunks"]
    check_training_data(cfg, chunks)
    cfg = trained_rewriter(trained_judge(cfg, chunks), chunks)
    calls: dict[str, int] = {}
    audits, thoughts, heldout = shared_stages(cfg, chunks, calls, setting.thoughts)
    audit = audits["evaluation"]  # the audit every judged evaluation ran under

    # The arms train, and every model is evaluated, as their inputs are ready: up to
    # lifecycle.parallel stages at once (tasks/slots.py).
    with torch_threads(threads_per_slot(cfg.lifecycle.parallel)):  # evaluations run in this process
        training = setting.submit(cfg, chunks, thoughts)
        evaluations = {name: evaluate_task.submit(cfg, stages[-1][1] if stages else cfg.model.policy, chunks, audit,
                                                  heldout) for name, stages in setting.arms(training).items()}
        trained = {name: f.result() for name, f in training.items()}
        evals = {name: f.result() for name, f in evaluations.items()}
    calls["training"] = sum(r.judge_calls for r in trained.values())
    for name in setting.published:
        publish_metrics(trained[name], f"{name}-metrics", cfg)
    arms = setting.arms(trained)
    comparisons = [(a, b, compare_task(cfg, evals[a], evals[b], chunks, audit)) for a, b in setting.pairs]
    agreement = agreement_task(cfg, [(evals[a], evals[b]) for a, b in setting.pairs], chunks)
    judges = {"roles": judge_roles(cfg), "audits": audits, "judge_agreement": agreement}
    report = report_task(cfg, params.preset, arms, evals, comparisons, audits["training"],
                         [trained[k].uri for k in setting.published], judges)
    calls["evaluation"] = sum(e.judge_calls for e in evals.values()) + sum(c.judge_calls for _, _, c in comparisons)
    calls["agreement"] = sum(agreement["details"]["calls"].values())
    publish_report(cfg, report)
    finals = {name: stages[-1][1].uri if stages else cfg.model.policy for name, stages in arms.items()}
    out = summarize(report, time.perf_counter() - started, calls, finals, list(trained.values()), evals)
    return {**out, "judges": judges}


def summarize(report: ReportRef, seconds: float, calls: dict[str, int], finals: dict[str, str], trained: list,
              evals: dict) -> dict:
    """Log and print what the run did; the flow's result."""
    judge_calls = sum(calls.values())
    reused, cached = sum(r.reused for r in trained), sum(e.cached for e in evals.values())
    partial = sum(e.partial for e in evals.values())
    get_run_logger().info("lifecycle finished in %.0fs; model calls this run: %s", seconds, calls)
    print(f"lifecycle: report -> {report.html} (markdown {report.markdown}); {seconds:.0f}s, "
          f"{judge_calls} model calls ({', '.join(f'{k} {v}' for k, v in calls.items())}); "
          f"{reused}/{len(trained)} training stages reused, {cached}/{len(evals)} evaluations cached"
          + (f", {partial} partial (failed judge calls, asked again next run)" if partial else ""))
    return {"report": report, "seconds": seconds, "judge_calls": judge_calls, "calls": calls, "finals": finals,
            "reused_stages": reused, "cached_evals": cached}
