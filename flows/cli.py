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
from sip_core.llm.cache import CallsFailed
from sip_core.training import JudgeGateFailed, RecipeFailed
from sip_core.training.recipe import TrainingStopped

USER_ERRORS = (ConfigError, SourceError, ModelRefError, FileNotFoundError, RecipeFailed, JudgeGateFailed)
# A job whose model calls failed: not bad input (exit 1), but one line all the same.
JOB_FAILURES = (CallsFailed, TrainingStopped)


class _QuietUserErrors(logging.Filter):
    """Prefect logs a failed task with its traceback; for bad input that is noise, not help."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], USER_ERRORS + JOB_FAILURES):
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
    from flows._lifeline import install
    from flows.prepare import prepare

    install()  # the temporary Prefect server ends with this process, even after kill -9
    _quiet_prefect_tracebacks()
    started = time.perf_counter()
    out = prepare(cfg)
    docs, filt, chunks = out["docs"].stats, out["filtered"].stats, out["chunks"].stats
    labels = filt.get("labels", {})
    skipped = sum(docs.get("skipped", {}).values())
    split = chunks.get("chunks", {})
    print(f"prepare: {docs['documents']} docs ({skipped} bad records skipped) -> unsafe {labels.get('unsafe', 0)}, "
          f"rest {labels.get('rest', 0)}, excluded {labels.get('excluded', 0)} -> {split.get('train', 0)} train + "
          f"{split.get('heldout', 0)} held-out chunks of {chunks.get('suffix_tokens')} suffix tokens "
          f"({chunks.get('skipped', {}).get('too_short', 0)} docs too short) in {time.perf_counter() - started:.1f}s "
          f"-> {out['chunks'].uri}")
    return 0


def _preflight(cfg: SipConfig) -> None:
    """Bad input fails here, in one line, before Prefect starts and before any stage runs: the run
    root, the source (every file's header), the policy and every local model a role loads."""
    from sip_core.data.readers import check_source, resolve_source
    from sip_core.infra.models import check_model

    from sip_core.infra.run_context import RunContext

    _check_root(cfg.run.root)
    check_source(resolve_source(cfg.data, cfg.run.storage_options), cfg.run.storage_options)
    check_model(cfg.model.policy, cfg.model.cache_dir)
    for role in ("judge", "rewriter", "teacher"):
        llm = getattr(cfg, role)
        if llm.backend == "local" or (llm.backend == "proxy" and llm.model != "none"):  # loaded in-process
            try:
                check_model(llm.model, cfg.model.cache_dir)
            except ModelRefError as exc:
                raise ModelRefError(f"{role}.model: {exc}") from None
    RunContext(cfg).check_state()  # an unreachable or incompatible run.state: StateError, one line


def _check_root(root: str) -> None:
    """A local run.root must be a folder this user can create: not below a file, not read-only."""
    from pathlib import Path

    from sip_core.infra import store
    if store.is_remote(root):
        return
    path = Path(root).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"run.root {root}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"run.root {root}: {existing} is not writable")


def _preflight_judges(cfg: SipConfig, roles: tuple[str, ...]) -> None:
    """A probs judge behind an endpoint must give option logprobs: one tiny request per task, before
    Prefect starts and before any training (ConfigError: one line, exit 2). A key kept in a Prefect
    block is checked by the audit instead: reading the block needs the Prefect server."""
    from sip_core.judge.spec import check_verdicts
    from sip_core.llm.factory import make_backend

    for role in roles:
        role_cfg = getattr(cfg, role)
        if role_cfg.backend == "openai" and not role_cfg.api_key_block:
            check_verdicts(make_backend(role_cfg), role_cfg)


def _run_job(args, params_cls: str, flow_name: str, module: str = "flows.llm_jobs",
             judges: tuple[str, ...] = (), **extra) -> dict:
    """Build the job's parameter model (as a deployment would get it), check it and the judge
    roles it reads (`judges`), run the flow."""
    import importlib

    from sip_core import config
    params = getattr(config, params_cls)(config_file=args.config, overrides=args.overrides, **extra)
    cfg = params.load()
    _preflight(cfg)
    _preflight_judges(cfg, judges)
    from flows._lifeline import install

    install()  # the temporary Prefect server ends with this process, even after kill -9
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
    from sip_core.report.summaries import audit_markdown

    params_cfg = _load(args)
    out = _run_job(args, "AuditParams", "audit")
    print(audit_markdown(out.report))
    print(f"audit-judge: {'passed' if out.report['passed'] else 'FAILED'} gate, {out.calls} calls "
          f"({out.cache_hits} cached) -> " + (out.audit.uri if out.audit else
                                                 f"not committed: calls failed {out.report['failed_calls']}, "
                                                 "run again to ask them"))
    if not out.report["passed"] and params_cfg.judge.gate == "enforce":  # what training would refuse
        print(f"sip: error: judge {out.report['judge']} failed its audit (judge.gate=enforce): "
              f"{'; '.join(out.report['reasons'])}", file=sys.stderr)
        return 1
    return 0


def _train_summary(name: str, out) -> None:
    stats = out.stats
    extra = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()
                      if k.startswith(("final_", "after_", "before_")))
    print(f"{name}: {stats.get('steps')} steps{', ' + extra if extra else ''} -> {out.uri} "
          f"(metrics: {stats.get('metrics_uri')})")


def cmd_pretrain(args) -> int:
    objective = getattr(args, "objective", None)
    judged = (objective or _load(args).pretrain.objective) != "ntp"
    out = _run_job(args, "PretrainParams", "pretrain", "flows.train", judges=("judge",) * judged, objective=objective)
    result = out["pretrain"]
    _train_summary(f"pretrain ({result.stats.get('objective') or objective or _load(args).pretrain.objective})", result)
    return 0


def cmd_midtrain(args, stage: str | None = None) -> int:
    stage = stage or args.stage
    out = _run_job(args, "MidtrainParams", "midtrain", "flows.train", judges=("judge",) * (stage != "sft"),
                   stage=stage, init=args.init)
    for name in ("sft", "rlmt"):
        if name in out:
            _train_summary(name, out[name])
    return 0


def cmd_evaluate(args) -> int:
    out = _run_job(args, "EvaluateParams", "evaluate", "flows.evaluate", judges=("eval_judge",), model=args.model,
                   against=args.against)
    from sip_core.report.summaries import results_markdown

    print(results_markdown(args.model, out["model"].results))
    partial = [e for e in (out["model"], out.get("against"), out.get("comparison")) if e is not None and e.partial]
    failed = sum(sum(e.failed_calls.values()) for e in partial)
    print(f"evaluate: -> {out['model'].uri}" + (f" (partial, not committed: {failed} judge calls failed; "
                                                 "run again to ask them)" if partial else ""))
    return 0


def cmd_lifecycle(args) -> int:
    preset = None if args.config else args.preset
    out = _run_job(args, "LifecycleParams", "lifecycle", "flows.lifecycle", judges=("judge", "eval_judge"),
                   preset=preset)
    print(f"report: {out['report'].html}")
    return 0


def cmd_cache_stats(args) -> int:
    from sip_core.infra.run_context import RunContext

    cfg = _load(args)
    path = RunContext(cfg).judgments_db
    if not path.exists():
        raise FileNotFoundError(f"no judgment cache at {path} (run a job first, or pass the run's --config)")
    rows = RunContext(cfg).judgment_cache().stats()
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

    from sip_core.infra import store

    cfg = _load(args)
    if not store.exists(args.uri, cfg.run.storage_options):
        raise FileNotFoundError(f"lineage: no such artifact or shard: {args.uri}")
    rows = ancestry(args.uri, cfg)
    print(format_ancestry(rows, verbose=args.verbose))
    return 0


def arg(*flags: str, **options) -> tuple[tuple[str, ...], dict]:
    """One argument of a command, as `add_argument` takes it."""
    return flags, options


def _command(sub, name: str, text: str, func, *arguments: tuple, **defaults) -> None:
    """A subcommand: its own arguments, then --config / --set; `func` runs it."""
    p = sub.add_parser(name, help=text)
    for flags, options in arguments:
        p.add_argument(*flags, **options)
    _config_args(p)
    p.set_defaults(func=func, **defaults)


def _training_commands(sub) -> None:
    _command(sub, "pretrain", "self-improving pretraining: Online DPO over {original, rewrite, K rollouts}",
             cmd_pretrain, arg("--objective", choices=["dpo", "rf_nll", "ntp"], help="override pretrain.objective"))
    _command(sub, "baseline", "the next-token baseline: pretrain with objective ntp on the same data", cmd_pretrain,
             objective="ntp")
    init = arg("--init", help="starting checkpoint (e.g. a pretrain run's final/)")
    for stage, text in (("sft", "thinking SFT on integrity-gated thought data"),
                        ("rlmt", "RLMT: thought -> predicted suffix -> judged reward, DrGRPO"),
                        ("midtrain", "thinking mid-training: SFT then RLMT")):
        _command(sub, stage, text, lambda a, s=stage: cmd_midtrain(a, "both" if s == "midtrain" else s), init)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sip", description="Self-improving pretraining workflows")
    sub = parser.add_subparsers(dest="command", required=True)
    _command(sub, "prepare", "run the data flow: ingest, rule filter, chunk + split", cmd_prepare)
    config = sub.add_parser("config", help="config tools").add_subparsers(dest="config_command", required=True)
    _command(config, "show", "print the effective config", cmd_config_show)
    _command(sub, "rewrite", "rewrite the next suffixes not yet rewritten (the nightly job)", cmd_rewrite,
             arg("--limit", type=int, default=64, help="chunks to rewrite in this run"),
             arg("--split", choices=["train", "heldout"], default="train"))
    _command(sub, "thoughts", "insert thoughts into chunks with the teacher, integrity-gated", cmd_thoughts,
             arg("--limit", type=int, default=64), arg("--match", choices=["exact", "normalized"], default="exact"))
    _command(sub, "audit-judge", "score the configured judge on corrupted-vs-original items", cmd_audit)
    _training_commands(sub)
    _command(sub, "evaluate", "evaluate a model (a checkpoint URI or model ref), optionally against another",
             cmd_evaluate, arg("--model", default="bundled:smollm2-135m-instruct"),
             arg("--against", help="a second model for the pairwise win rate"))
    run = sub.add_parser("run", help="run a whole workflow").add_subparsers(dest="workflow", required=True)
    _command(run, "lifecycle", "both lineages + the NTP control, evaluations and one report", cmd_lifecycle,
             arg("--preset", choices=["smoke", "tiny", "tiny-trained-judge", "safety-tiny"], default="tiny",
                 help="configs/<preset>.yaml (ignored when --config is given)"))
    cache = sub.add_parser("cache", help="judgment cache tools").add_subparsers(dest="cache_command", required=True)
    _command(cache, "stats", "hits, misses, parse failures and tokens per prompt version", cmd_cache_stats)
    _command(sub, "lineage", "print an artifact's ancestry back to its sources", cmd_lineage,
             arg("uri", help="a dataset folder or a shard file"),
             arg("--verbose", "-v", action="store_true", help="also print each artifact's config"))
    _area_commands(sub)
    return parser


def _area_commands(sub) -> None:
    """Commands that live beside their stage: each `flows/cli_<area>.py` exposes `add_commands(sub)`."""
    import importlib
    import pkgutil

    import flows
    for module in sorted(m.name for m in pkgutil.iter_modules(flows.__path__) if m.name.startswith("cli_")):
        importlib.import_module(f"flows.{module}").add_commands(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"sip: error: {exc}", file=sys.stderr)
        return 2
    except JOB_FAILURES as exc:
        print(f"sip: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    sys.exit(main())
