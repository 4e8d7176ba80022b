"""The `sip` command. Bad input ends in one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import yaml

from sip_core.config import ConfigError, SipConfig, load_config
from sip_core.infra.models import ModelRefError
from sip_core.data.readers import SourceError
from sip_core.training import JudgeGateFailed, RecipeFailed

USER_ERRORS = (ConfigError, SourceError, ModelRefError, FileNotFoundError, RecipeFailed, JudgeGateFailed)


class _QuietUserErrors(logging.Filter):
    """Prefect logs a failed task with its traceback; for bad input that is noise, not help."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], USER_ERRORS):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_prefect_tracebacks() -> None:
    loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, _QuietUserErrors) for f in handler.filters):
                handler.addFilter(_QuietUserErrors())


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config file (e.g. configs/tiny.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set data.max_docs=100 (repeatable)")


def _load(args) -> SipConfig:
    return load_config(args.config, args.overrides)


def cmd_config_show(args) -> int:
    print(yaml.safe_dump(_load(args).model_dump(mode="json"), sort_keys=False), end="")
    return 0


def cmd_prepare(args) -> int:
    cfg = _load(args)
    _preflight(cfg)
    from flows.prepare import prepare

    _quiet_prefect_tracebacks()
    started = time.perf_counter()
    out = prepare(cfg)
    docs, filt, chunks = out["docs"]["stats"], out["filtered"]["stats"], out["chunks"]["stats"]
    labels = filt.get("labels", {})
    skipped = sum(docs.get("skipped", {}).values())
    split = chunks.get("chunks", {})
    print(f"prepare: {docs['documents']} docs ({skipped} bad records skipped) -> unsafe {labels.get('unsafe', 0)}, "
          f"rest {labels.get('rest', 0)}, excluded {labels.get('excluded', 0)} -> {split.get('train', 0)} train + "
          f"{split.get('heldout', 0)} held-out chunks of {chunks.get('suffix_tokens')} suffix tokens "
          f"({chunks.get('skipped', {}).get('too_short', 0)} docs too short) in {time.perf_counter() - started:.1f}s "
          f"-> {out['chunks']['uri']}")
    return 0


def _preflight(cfg: SipConfig) -> None:
    from sip_core.infra.models import resolve_model
    from sip_core.data.readers import resolve_source

    resolve_source(cfg.data, cfg.run.storage_options)  # fail fast on bad input, before Prefect starts
    resolve_model(cfg.model.policy, cfg.model.cache_dir)


def _run_job(args, params_cls: str, flow_name: str, module: str = "flows.llm_jobs", **extra) -> dict:
    """Build the job's parameter model (as a deployment would get it), check it, run the flow."""
    import importlib

    from sip_core import config
    params = getattr(config, params_cls)(config_file=args.config, overrides=args.overrides, **extra)
    _preflight(params.load())
    flow = getattr(importlib.import_module(module), flow_name)
    _quiet_prefect_tracebacks()
    return flow(params)


def cmd_rewrite(args) -> int:
    _run_job(args, "RewriteParams", "rewrite", limit=args.limit, split=args.split)
    return 0


def cmd_thoughts(args) -> int:
    _run_job(args, "ThoughtParams", "thoughts", limit=args.limit, match=args.match)
    return 0


def cmd_audit(args) -> int:
    from flows.llm_jobs import audit_markdown

    out = _run_job(args, "AuditParams", "audit")
    print(audit_markdown(out["report"]))
    print(f"audit-judge: {'passed' if out['report']['passed'] else 'FAILED'} gate, {out['calls']} calls "
          f"({out['cache_hits']} cached) -> {out['audit']['uri']}")
    return 0


def _train_summary(name: str, out: dict) -> None:
    stats = out["stats"]
    extra = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()
                      if k.startswith(("final_", "after_", "before_")))
    print(f"{name}: {stats.get('steps')} steps{', ' + extra if extra else ''} -> {out['uri']} "
          f"(metrics: {stats.get('metrics_uri')})")


def cmd_pretrain(args) -> int:
    objective = getattr(args, "objective", None)
    out = _run_job(args, "PretrainParams", "pretrain", "flows.train", objective=objective)
    _train_summary(f"pretrain ({objective or 'config objective'})", out)
    return 0


def cmd_midtrain(args, stage: str | None = None) -> int:
    out = _run_job(args, "MidtrainParams", "midtrain", "flows.train", stage=stage or args.stage, init=args.init)
    for name in ("sft", "rlmt"):
        if name in out:
            _train_summary(name, out[name])
    return 0


def cmd_evaluate(args) -> int:
    out = _run_job(args, "EvaluateParams", "evaluate", "flows.evaluate", model=args.model, against=args.against)
    from flows.evaluate import results_markdown

    print(results_markdown(args.model, out["model"]["results"]))
    print(f"evaluate: -> {out['model']['uri']}")
    return 0


def cmd_lifecycle(args) -> int:
    preset = None if args.config else args.preset
    out = _run_job(args, "LifecycleParams", "lifecycle", "flows.lifecycle", preset=preset)
    print(f"report: {out['report']['html']}")
    return 0


def cmd_cache_stats(args) -> int:
    from sip_core.llm.cache import JudgmentCache
    from sip_core.infra.run_context import state_dir_for

    cfg = _load(args)
    path = state_dir_for(cfg.run.root, cfg.run.state_dir) / "judgments.duckdb"
    if not path.exists():
        raise FileNotFoundError(f"no judgment cache at {path} (run a job first, or pass the run's --config)")
    rows = JudgmentCache(path).stats()
    cols = ["prompt", "model_id", "hits", "misses", "stored", "ok", "parse_failures", "errors", "prompt_tokens",
            "completion_tokens", "mean_latency_s"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))
    print(f"cache: {sum(r['stored'] for r in rows)} judgments stored, {sum(r['hits'] for r in rows)} hits, "
          f"{sum(r['misses'] for r in rows)} misses, {sum(r['parse_failures'] for r in rows)} parse failures -> {path}")
    return 0


def cmd_lineage(args) -> int:
    from sip_core.infra.ancestry import ancestry, format_ancestry

    cfg = _load(args)
    rows = ancestry(args.uri, cfg)
    print(format_ancestry(rows, verbose=args.verbose))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sip", description="Self-improving pretraining workflows")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="run the data flow: ingest, rule filter, chunk + split")
    _config_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("config", help="config tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="print the effective config")
    _config_args(show)
    show.set_defaults(func=cmd_config_show)

    p = sub.add_parser("rewrite", help="rewrite the next suffixes not yet rewritten (the nightly job)")
    p.add_argument("--limit", type=int, default=64, help="chunks to rewrite in this run")
    p.add_argument("--split", choices=["train", "heldout"], default="train")
    _config_args(p)
    p.set_defaults(func=cmd_rewrite)

    p = sub.add_parser("thoughts", help="insert thoughts into chunks with the teacher, integrity-gated")
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--match", choices=["exact", "normalized"], default="exact")
    _config_args(p)
    p.set_defaults(func=cmd_thoughts)

    p = sub.add_parser("audit-judge", help="score the configured judge on corrupted-vs-original items")
    _config_args(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("pretrain", help="self-improving pretraining: Online DPO over {original, rewrite, K rollouts}")
    p.add_argument("--objective", choices=["dpo", "rf_nll", "ntp"], help="override pretrain.objective")
    _config_args(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("baseline", help="the next-token baseline: pretrain with objective ntp on the same data")
    _config_args(p)
    p.set_defaults(func=cmd_pretrain, objective="ntp")

    for stage, text in (("sft", "thinking SFT on integrity-gated thought data"),
                        ("rlmt", "RLMT: thought -> predicted suffix -> judged reward, DrGRPO"),
                        ("midtrain", "thinking mid-training: SFT then RLMT")):
        p = sub.add_parser(stage, help=text)
        p.add_argument("--init", help="starting checkpoint (e.g. a pretrain run's final/)")
        _config_args(p)
        p.set_defaults(func=lambda a, s=stage: cmd_midtrain(a, "both" if s == "midtrain" else s))

    p = sub.add_parser("evaluate", help="evaluate a model (a checkpoint URI or model ref), optionally against another")
    p.add_argument("--model", default="bundled:smollm2-135m-instruct")
    p.add_argument("--against", help="a second model for the pairwise win rate")
    _config_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("run", help="run a whole workflow")
    rsub = p.add_subparsers(dest="workflow", required=True)
    lc = rsub.add_parser("lifecycle", help="both lineages + the NTP control, evaluations and one report")
    lc.add_argument("--preset", choices=["smoke", "tiny"], default="tiny",
                    help="configs/<preset>.yaml (ignored when --config is given)")
    _config_args(lc)
    lc.set_defaults(func=cmd_lifecycle)

    p = sub.add_parser("cache", help="judgment cache tools")
    csub2 = p.add_subparsers(dest="cache_command", required=True)
    stats = csub2.add_parser("stats", help="hits, misses, parse failures and tokens per prompt version")
    _config_args(stats)
    stats.set_defaults(func=cmd_cache_stats)

    p = sub.add_parser("lineage", help="print an artifact's ancestry back to its sources")
    p.add_argument("uri", help="a dataset folder or a shard file")
    p.add_argument("--verbose", "-v", action="store_true", help="also print each artifact's config")
    _config_args(p)
    p.set_defaults(func=cmd_lineage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"sip: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    sys.exit(main())
