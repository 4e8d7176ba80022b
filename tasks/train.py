"""Training tasks: each launches its recipe as a subprocess (`torchrun` when more than one
process is asked for), streams the recipe's output into the Prefect log line by line, and on a
retry simply relaunches: the recipe resumes from its newest committed checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import deque

import yaml
from prefect import get_run_logger, task
from prefect.runtime import flow_run, task_run

from sip_core.config import SipConfig
from sip_core.infra import artifacts
from sip_core.infra.artifacts import ArtifactRef
from sip_core.training import RecipeFailed
from sip_core.training.recipe import TrainingStopped
from tasks.progress import step_line
from tasks.runs import die_with_parent
from tasks.slots import compute_slot, threads_per_slot


class RecipeCrashed(RecipeFailed):
    """The recipe process died (a signal, an out-of-memory kill, an exception): worth one relaunch."""


class TrainResult(ArtifactRef):
    """A recipe's final checkpoint, whether it was reused (already trained), and the judge calls made."""

    reused: bool = False
    judge_calls: int = 0


def recipe_command(module: str, config_path: str, nproc: int, args: list[str]) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] \
        if nproc > 1 else [sys.executable]
    return [*launcher, "-m", module, "--config", config_path, *args]


def run_recipe(module: str, cfg: SipConfig, nproc: int, args: list[str], log=print) -> TrainResult:
    """Run one recipe to completion (in one of `lifecycle.parallel` slots); returns the final
    checkpoint's manifest reference."""
    with compute_slot(cfg.lifecycle.parallel):
        return _run_recipe(module, cfg, nproc, args, log)


def _run_recipe(module: str, cfg: SipConfig, nproc: int, args: list[str], log) -> TrainResult:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        os.chmod(f.name, 0o600)  # storage options may hold credentials
        yaml.safe_dump(cfg.model_dump(mode="json"), f)
    ids = ["--flow-run-id", str(flow_run.id)] if flow_run.id else []
    ids += ["--task-run-id", str(task_run.id)] if task_run.id else []
    cmd = recipe_command(module, f.name, nproc, [*args, *ids])
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "PYTHONUNBUFFERED": "1"}
    if threads := threads_per_slot(cfg.lifecycle.parallel):
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in the recipe
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              preexec_fn=die_with_parent) as proc:  # no orphan after kill -9 of `sip`
            out = _follow(proc.stdout, log)
            rc = proc.wait()
    finally:
        os.unlink(f.name)
    final, reused, judge_calls, stopped, tail = out
    if stopped:  # its work failed (a dead judge): no final/, and relaunching now would fail the same way
        raise TrainingStopped(stopped)
    if rc not in (0, 2):  # killed or crashed: a relaunch resumes from its newest checkpoint
        raise RecipeCrashed(f"{module} exited with {rc}: {tail[-1] if tail else 'no output'}")
    if rc != 0 or final is None:
        raise RecipeFailed(f"{module} exited with {rc}: {tail[-1] if tail else 'no output'}")
    ref = ArtifactRef.of(artifacts.load_manifest(final, cfg.run.storage_options))
    return TrainResult(**ref.model_dump(), reused=reused, judge_calls=judge_calls)


def _follow(lines, log) -> tuple[str | None, bool, int, str | None, deque]:
    """Read a recipe's output: log it (a JSON event as one compact line; every metric stays in
    metrics.parquet) and collect (final URI, reused, judge calls, stop reason, last lines)."""
    tail: deque[str] = deque(maxlen=20)
    final, reused, judge_calls, stopped, first_step = None, False, 0, None, None
    for line in lines:
        line = line.rstrip()
        if not line or "it/s]" in line:  # progress-bar redraws say nothing a log needs
            continue
        tail.append(line)
        if not line.startswith("{"):
            log(line)
            continue
        event = json.loads(line)
        if first_step is None and "step" in event and "event" not in event:
            first_step = event["step"] - 1  # a resumed run's ETA counts this launch's steps
        if (compact := step_line(event, first_step or 0)) is not None:
            log(compact)
        if event.get("event") in ("done", "reused"):
            final, reused = event["final"], event["event"] == "reused"
        stopped = event["reason"] if event.get("event") == "stopped" else stopped
        judge_calls += int(event.get("judge_calls") or 0)
    return final, reused, judge_calls, stopped, tail


def _logger_line():
    logger = get_run_logger()
    return logger.info


def relaunchable(task, task_run, state) -> bool:
    """A crashed recipe is relaunched; one that stopped for failed work or bad input is not."""
    try:
        state.result()
    except RecipeCrashed:
        return True
    except (TrainingStopped, RecipeFailed):
        return False
    except Exception:
        return True
    return False


# Retries relaunch the recipe, which resumes from its newest checkpoint (no work is redone).
OPTIONS = dict(retries=1, retry_delay_seconds=10, retry_condition_fn=relaunchable)


@task(name="pretrain", **OPTIONS)
def pretrain_task(cfg: SipConfig, chunks: ArtifactRef) -> TrainResult:
    return run_recipe("sip_core.recipes.pretrain", cfg, cfg.pretrain.nproc_per_node, ["--chunks", chunks.uri],
                      _logger_line())


def with_init(cfg: SipConfig, section: str, init: ArtifactRef | str | None) -> SipConfig:
    """cfg with `<section>.init` set to a checkpoint (a training task's result or a URI)."""
    if init is None:
        return cfg
    return cfg.replace({f"{section}.init": init.uri if isinstance(init, ArtifactRef) else init})


@task(name="sft", **OPTIONS)
def sft_task(cfg: SipConfig, thoughts: ArtifactRef, init: ArtifactRef | str | None = None) -> TrainResult:
    """Thinking SFT from `init` (a pretrain task's result, a URI, or None: cfg.sft.init). It reads
    the thought data alone (no chunks)."""
    cfg = with_init(cfg, "sft", init)
    return run_recipe("sip_core.recipes.sft", cfg, cfg.sft.nproc_per_node, ["--thoughts", thoughts.uri],
                      _logger_line())


@task(name="rlmt", **OPTIONS)
def rlmt_task(cfg: SipConfig, chunks: ArtifactRef, thoughts: ArtifactRef | None,
              init: ArtifactRef | str | None = None) -> TrainResult:
    cfg = with_init(cfg, "rlmt", init)
    args = ["--chunks", chunks.uri, *(["--thoughts", thoughts.uri] if thoughts else [])]
    return run_recipe("sip_core.recipes.rlmt", cfg, cfg.rlmt.nproc_per_node, args, _logger_line())
