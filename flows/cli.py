"""The `sip` command. Bad input ends in one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import yaml

from sip_core.config import ConfigError, SipConfig, load_config
from sip_core.models import ModelRefError
from sip_core.sources import SourceError

USER_ERRORS = (ConfigError, SourceError, ModelRefError, FileNotFoundError)


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
    from sip_core.models import resolve_model
    from sip_core.sources import resolve_source

    cfg = _load(args)
    resolve_source(cfg.data, cfg.run.storage_options)  # fail fast on bad input, before Prefect starts
    resolve_model(cfg.model.policy, cfg.model.cache_dir)
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


def cmd_lineage(args) -> int:
    from sip_core.lineage_view import ancestry, format_ancestry

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
