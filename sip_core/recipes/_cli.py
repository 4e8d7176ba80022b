"""The command line every recipe shares (what the Prefect task passes to torchrun)."""

from __future__ import annotations

import argparse
import sys

from sip_core.infra import artifacts
from sip_core.infra.artifacts import Manifest, Provenance
from sip_core.config import ConfigError, SipConfig, load_config


def parse(description: str, extra_args: tuple[str, ...] = ()) -> tuple[SipConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--chunks", help="URI of the committed chunk artifact (default: run prepare)")
    parser.add_argument("--flow-run-id")
    parser.add_argument("--task-run-id")
    for name in extra_args:
        parser.add_argument(name)
    args = parser.parse_args()
    try:
        return load_config(args.config, args.overrides), args
    except ConfigError as exc:
        sys.exit(f"error: {exc}")


def provenance(args: argparse.Namespace) -> Provenance:
    return Provenance(args.flow_run_id, args.task_run_id)


def chunk_manifest(cfg: SipConfig, uri: str | None, prov: Provenance) -> Manifest:
    """The chunk artifact named on the command line, or the one prepare makes (cached)."""
    if uri:
        return artifacts.load_manifest(uri, cfg.run.storage_options)
    from sip_core.infra.run_context import RunContext
    from sip_core.data.prepare import filter_documents, ingest_documents, materialize_chunks

    env = RunContext(cfg, prov)
    return materialize_chunks(env, filter_documents(env, ingest_documents(env)))
