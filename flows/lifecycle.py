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

from flows.prepare import prepare
from flows.train import judge_gate, publish_metrics
from sip_core.infra import store
from sip_core.config import LifecycleParams, SipConfig
from sip_core.infra.models import torch_threads
from tasks.evaluate import compare_task, evaluate_task, report_task, stage_view
from tasks.llm_jobs import rewrite_task, thoughts_task
from tasks.slots import threads_per_slot
from tasks.train import pretrain_task, rlmt_task, sft_task

BASE, SIP_ARM, NTP_ARM = "base→SFT→RLMT", "base→SIP→SFT→RLMT", "base→NTP"


def _rewritten(cfg: SipConfig, chunks: dict) -> int:
    """Chunks already sent to the rewriter (whatever the outcome), so a rerun sends none."""
    from sip_core.augment.rewrites import batches_made_from
    from sip_core.infra import artifacts
    from sip_core.infra.run_context import RunContext

    manifest = artifacts.load_manifest(chunks["uri"], cfg.run.storage_options)
    return sum(m.rows or 0 for m in batches_made_from(RunContext(cfg), manifest))


@flow(name="lifecycle", log_prints=True)
def lifecycle(params: LifecycleParams = LifecycleParams()) -> dict:
    started = time.perf_counter()
    cfg = params.load()
    log = get_run_logger()
    chunks = prepare(cfg)["chunks"]
    calls: dict[str, int] = {}
    audit_calls: list[int] = []
    audit = judge_gate(cfg, chunks, audit_calls)
    calls["audit"] = sum(audit_calls)
    if cfg.lifecycle.rewrite_limit > _rewritten(cfg, chunks):  # a rerun rewrites nothing new
        calls["rewrite"] = rewrite_task(cfg, chunks, cfg.lifecycle.rewrite_limit - _rewritten(cfg, chunks),
                                        "train")["calls"]
    thoughts = thoughts_task(cfg, chunks, cfg.lifecycle.thought_limit, "exact")
    calls["thoughts"] = thoughts["calls"]

    # The arms train, and the five models are evaluated, as their inputs are ready: up to
    # lifecycle.parallel stages at once (tasks/slots.py). Submitted in dependency order.
    with torch_threads(threads_per_slot(cfg.lifecycle.parallel)):  # evaluations run in this process
        sip_f = pretrain_task.submit(cfg.replace({"pretrain.objective": "dpo"}), chunks)
        ntp_f = pretrain_task.submit(cfg.replace({"pretrain.objective": "ntp"}), chunks)
        base_sft_f = sft_task.submit(cfg, thoughts)
        base_rlmt_f = rlmt_task.submit(cfg, chunks, thoughts, base_sft_f)
        sip_sft_f = sft_task.submit(cfg, thoughts, sip_f)
        sip_rlmt_f = rlmt_task.submit(cfg, chunks, thoughts, sip_sft_f)
        finals_f = {"base": cfg.model.policy, BASE: base_rlmt_f, SIP_ARM: sip_rlmt_f, NTP_ARM: ntp_f,
                    "base→SIP": sip_f}
        eval_f = {name: evaluate_task.submit(cfg, ref, chunks, audit, thoughts) for name, ref in finals_f.items()}
        sip, ntp, base_sft, base_rlmt, sip_sft, sip_rlmt = (
            f.result() for f in (sip_f, ntp_f, base_sft_f, base_rlmt_f, sip_sft_f, sip_rlmt_f))
        evals = {name: f.result() for name, f in eval_f.items()}
    trained = [sip, ntp, base_sft, base_rlmt, sip_sft, sip_rlmt]
    calls["training"] = sum(r["judge_calls"] for r in trained)
    for name, result in (("sip", sip), ("ntp", ntp), ("base-rlmt", base_rlmt), ("sip-rlmt", sip_rlmt)):
        publish_metrics(result, f"{name}-metrics", cfg)
    finals = {"base": cfg.model.policy, BASE: base_rlmt["uri"], SIP_ARM: sip_rlmt["uri"], NTP_ARM: ntp["uri"],
              "base→SIP": sip["uri"]}
    pairs = [(SIP_ARM, BASE), ("base→SIP", NTP_ARM), ("base→SIP", "base"), (NTP_ARM, "base")]
    comparisons = [(a, b, compare_task(cfg, evals[a], evals[b], chunks, audit)) for a, b in pairs]

    stages = {"base": [], BASE: [("sft", base_sft), ("rlmt", base_rlmt)],
              SIP_ARM: [("pretrain-dpo", sip), ("sft", sip_sft), ("rlmt", sip_rlmt)],
              NTP_ARM: [("pretrain-ntp", ntp)], "base→SIP": [("pretrain-dpo", sip)]}
    label = f"{cfg.eval.prefixes} held-out prefixes, greedy {cfg.eval.continuation_tokens} tokens"
    results = {
        "run_name": cfg.run.name,
        "config": {"preset": params.preset, "policy": cfg.model.policy, "judge": cfg.judge.backend,
                   "data": cfg.data.source, "pretrain_steps": cfg.pretrain.steps, "sft_steps": cfg.sft.steps,
                   "rlmt_steps": cfg.rlmt.steps, "k_rollouts": cfg.pretrain.k_rollouts},
        "arms": [{"name": name, "stages": [stage_view(cfg, recipe, r) for recipe, r in stages[name]],
                  "evaluations": evals[name]["results"]} for name in finals],
        "comparisons": [{"a": a, "b": b, "label": label, "result": c["results"][kind]}
                        for a, b, c in comparisons for kind in ("winrate", "coherence") if kind in c["results"]],
        "judge_audit": audit,
        "notes": [f"judge backend: {cfg.judge.backend} ({cfg.judge.model}); a proxy judge is a stand-in, "
                  "not evidence about the method" if cfg.judge.backend == "proxy" else f"judge: {cfg.judge.model}"],
    }
    report = report_task(cfg, results, [r["uri"] for r in (sip, ntp, base_rlmt, sip_rlmt)])
    calls["evaluation"] = sum(e["judge_calls"] for e in evals.values()) + sum(c["judge_calls"] for _, _, c in comparisons)
    judge_calls = sum(calls.values())
    md = store.read_bytes(report["markdown"], cfg.run.storage_options).decode()
    create_markdown_artifact(md, key="lifecycle-report", description=f"lifecycle report {report['uri']}")
    create_link_artifact(report["html"], key="lifecycle-report-html", link_text="report.html")
    seconds = time.perf_counter() - started
    log.info("lifecycle finished in %.0fs; model calls this run: %s", seconds, calls)
    print(f"lifecycle: report -> {report['html']} (markdown {report['markdown']}); {seconds:.0f}s, "
          f"{judge_calls} model calls ({', '.join(f'{k} {v}' for k, v in calls.items())}); "
          f"{sum(r['reused'] for r in trained)}/{len(trained)} training stages reused, "
          f"{sum(e['cached'] for e in evals.values())}/{len(evals)} evaluations cached")
    return {"report": report, "seconds": seconds, "judge_calls": judge_calls, "calls": calls, "finals": finals,
            "reused_stages": sum(r["reused"] for r in trained), "cached_evals": sum(e["cached"] for e in evals.values())}
