"""prepare: source documents -> rule filter -> (prefix, suffix) chunks split by document.

Ingest is one task; filter and chunk are mapped over the shards of their input dataset (one task
per shard, each writing its own parts and returning only their URIs and hashes), then one task
commits the parts as the stage's dataset. The mapped tasks run on the flow's task runner, chosen by
`run.task_runner`: threads of this process (default) or Ray (`run.ray_address`, else a local Ray).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from prefect import Flow, flow, get_run_logger, unmapped

from flows._common import run_cached
from sip_core.infra import artifacts
from sip_core.infra.artifacts import ArtifactRef
from sip_core.config import ConfigError, SipConfig
from sip_core.data.readers import SourceError
from tasks.progress import CountProgress
from tasks.prepare import (_load, chunk_shard_task, chunk_task, create_judgment_cache, filter_shard_task, filter_task,
                           ingest_task)

ROOT = Path(__file__).resolve().parents[1]


def ray_task_runner(cfg: SipConfig):
    """prefect-ray's RayTaskRunner for `cfg.run`: joins `run.ray_address`, else starts a local Ray
    (or uses the Ray this process already initialised) whose workers import this checkout and report
    to this process's Prefect API."""
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise ConfigError("run.task_runner=ray needs prefect-ray: pip install -e '.[ray]'") from None
    from prefect.settings import PREFECT_API_URL

    api_url = PREFECT_API_URL.value()
    env = {"PREFECT_API_URL": api_url} if api_url else {}
    if not cfg.run.ray_address:  # a local Ray: workers are fresh interpreters on this machine
        if not api_url:  # the ephemeral API this process started; else each worker would start its own
            from prefect.server.api.server import SubprocessASGIServer

            server = SubprocessASGIServer()  # the one Prefect's client uses in this process
            server.start()  # (if not yet running: this may be the first flow of the process)
            env["PREFECT_API_URL"] = server.api_url
        path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.update({"PYTHONPATH": path, **{k: os.environ[k] for k in ("PREFECT_HOME", "OMP_WAIT_POLICY",
                                                                        "SIP_CACHE_DIR") if k in os.environ}})
    return RayTaskRunner(address=cfg.run.ray_address, init_kwargs={
        "runtime_env": {"env_vars": env}, "include_dashboard": False, "logging_level": "WARNING"})


def _sharded(shard_task, commit_task, cfg: SipConfig, parent: ArtifactRef, inputs: list[str],
             **extra) -> ArtifactRef:
    """Map `shard_task` over `inputs` (shard URIs of `parent`), then commit the parts with
    `commit_task`; like run_cached, a cache hit whose artifact is gone is redone (all of it)."""
    version = artifacts.code_version()

    def run(refresh: bool) -> ArtifactRef:
        shard, commit = ((shard_task.with_options(refresh_cache=True), commit_task.with_options(refresh_cache=True))
                         if refresh else (shard_task, commit_task))
        parts = shard.map(unmapped(cfg), unmapped(parent), range(len(inputs)), inputs, unmapped(version),
                          **{k: unmapped(v) for k, v in extra.items()})
        progress = CountProgress(commit_task.name, len(inputs), get_run_logger(), unit="shards")
        for part in parts:  # in order: wait() is what every task runner's futures have (Ray's too)
            part.wait()
            progress(1)
        progress.close()
        parts.result()  # a failed shard (after its retries) fails the stage here, with its own error
        return commit(cfg, parent, version, parts)

    result = run(False)
    if artifacts.load_committed(result.uri, cfg.run.storage_options) is None:
        result = run(True)
    return result


class _RunnerFromConfig(Flow):
    """A flow whose task runner comes from its `config` argument (`run.task_runner`) when it is
    called (the CLI, a parent flow, a test). A deployment run starts the flow without calling it:
    there, the deployment's own flow object decides (see docs/running-at-scale.md)."""

    def __call__(self, *args, **kwargs):
        params = inspect.signature(self.fn).parameters
        bound = inspect.signature(self.fn).bind_partial(*args, **{k: v for k, v in kwargs.items() if k in params})
        cfg = bound.arguments.get("config", params["config"].default)
        cfg = cfg if isinstance(cfg, SipConfig) else SipConfig.model_validate(cfg)
        if cfg.run.task_runner == "ray":  # a copy (a plain Flow) with the Ray runner runs it
            return self.with_options(task_runner=ray_task_runner(cfg))(*args, **kwargs)
        return super().__call__(*args, **kwargs)


@flow(name="prepare", log_prints=True)
def prepare(config: SipConfig = SipConfig()) -> dict[str, ArtifactRef]:
    from sip_core.infra.run_context import RunContext
    from sip_core.data.prepare import chunk_inputs

    docs = run_cached(ingest_task, config)
    create_judgment_cache(config)
    filtered = _sharded(filter_shard_task, filter_task, config, docs,
                        artifacts.shard_uris(_load(docs, config)), parallel=config.run.task_runner != "ray")
    chunks = _sharded(chunk_shard_task, chunk_task, config, filtered,
                      chunk_inputs(RunContext(config), _load(filtered, config)))
    require_chunks(config, docs, filtered, chunks)
    return {"docs": docs, "filtered": filtered, "chunks": chunks}


def require_chunks(cfg: SipConfig, docs: ArtifactRef, filtered: ArtifactRef, chunks: ArtifactRef) -> None:
    """A corpus that yields no chunk is bad input, said with the counts, never an empty success."""
    split = chunks.stats.get("chunks", {})
    if sum(split.values()):
        return
    labels = filtered.stats.get("labels", {})
    d = cfg.data
    raise SourceError(
        f"data.source {d.source}: 0 chunks from {docs.stats.get('documents', 0)} documents "
        f"({sum(docs.stats.get('skipped', {}).values())} bad records skipped; filter: "
        f"{', '.join(f'{k} {v}' for k, v in labels.items()) or 'nothing kept'}; "
        f"{chunks.stats.get('skipped', {}).get('too_short', 0)} documents shorter than "
        f"data.min_prefix_tokens {d.min_prefix_tokens} + data.suffix_tokens {d.suffix_tokens} tokens)")


# `def prepare` stays a plain @flow in the source (deployments read its signature from there).
prepare = _RunnerFromConfig(prepare.fn, name=prepare.name, log_prints=True)
