"""The command line every recipe shares (what the Prefect task passes to torchrun):

    python -m sip_core.recipes.<name> --config FILE [--set KEY=VALUE ...] --chunks URI [--thoughts URI]
        [--flow-run-id ID] [--task-run-id ID]

Input artifacts are committed URIs; a missing or unreadable one is one line on stderr naming it
and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from sip_core.config import ConfigError, SipConfig, load_config
from sip_core.infra import artifacts
from sip_core.infra.artifacts import Manifest, Provenance
from sip_core.training.recipe import TrainingStopped
from sip_core.training.runtime import shutdown

STOPPED = 3  # exit status of a run stopped for failed work (no final/): not bad input (2), not a crash


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse(description: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = (),
          ) -> tuple[SipConfig, argparse.Namespace, _Parser]:
    parser = _Parser(description=description)
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    for name in (*required, *optional):
        parser.add_argument(f"--{name}", required=name in required, metavar="URI",
                            help=f"URI of the committed {name} artifact")
    parser.add_argument("--flow-run-id")
    parser.add_argument("--task-run-id")
    args = parser.parse_args()
    try:
        return load_config(args.config, args.overrides), args, parser
    except ConfigError as exc:
        sys.exit(f"error: {exc}")


def provenance(args: argparse.Namespace) -> Provenance:
    return Provenance(args.flow_run_id, args.task_run_id)


def load_input(parser: _Parser, cfg: SipConfig, name: str, uri: str | None) -> Manifest | None:
    """The committed artifact an input option names (None when it is absent)."""
    if uri is None:
        return None
    try:
        return artifacts.load_manifest(uri, cfg.run.storage_options)
    except (OSError, ValueError) as exc:
        parser.error(f"--{name} {uri}: {next(iter(str(exc).splitlines()), type(exc).__name__)}")


def main(doc: str, train: Callable[[SipConfig, dict[str, Manifest | None], Provenance], Manifest],
         required: tuple[str, ...] = (), optional: tuple[str, ...] = (), user_errors: tuple[type, ...] = (),
         name: str = "") -> None:
    """Parse the command line, load the input artifacts, run `train`, end the process group and the process.
    `user_errors`: the recipe's own bad-input errors, one line `<name>: error: ...` and exit 2."""
    cfg, args, parser = parse(doc.splitlines()[0], required, optional)
    inputs = {name: load_input(parser, cfg, name, getattr(args, name)) for name in (*required, *optional)}
    try:
        train(cfg, inputs, provenance(args))
        status = 0
    except user_errors as exc:  # the caller's input, not a crash
        status = _say(f"{name}: error: {exc}", 2)
    except TrainingStopped as exc:  # one line, no traceback: the run says why it stopped
        status = _say(f"error: {exc}", STOPPED)
    except ConfigError as exc:  # bad input found once the inputs are read (e.g. too few chunks)
        status = _say(f"error: {exc}", 2)
    except Exception:  # a crash keeps its traceback
        traceback.print_exc()
        status = 1
    shutdown()
    end_process(status)


def _say(line: str, status: int) -> int:
    print(line, file=sys.stderr, flush=True)
    return status


def end_process(status: int) -> NoReturn:
    """Exit without interpreter teardown. Everything the recipe made is committed (or refused) by now;
    what teardown adds is a race: Arrow's thread pools destroyed while a worker is still joinable abort
    the process (`terminate called without an active exception`, exit -6; apache/arrow#34314), which
    turned a clean exit 2 into a crash in 3 of 22 runs here."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
