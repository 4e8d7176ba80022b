"""The real prepare flow with `run.task_runner=ray` (prefect-ray's RayTaskRunner on a local Ray
cluster) writes exactly what the default thread-pool run writes.

Filter and chunk are mapped over shards (one task per shard, writing its own parts), so on Ray the
per-shard work runs in Ray worker processes. The Ray cluster is started here with 2 CPUs and a
200 MB object store; the flow's RayTaskRunner finds it initialised and uses it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
prefect_ray = pytest.importorskip("prefect_ray", reason="prefect-ray is not installed (pip install -e '.[ray]')")

import polars as pl  # noqa: E402

from sip_core.infra import artifacts  # noqa: E402
from sip_core.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray():
    import ray
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    # Ray workers are fresh interpreters: give them the checkout, and the API this process uses
    # (its ephemeral server; else each worker would start one of its own).
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if not (api_url := PREFECT_API_URL.value()):
        server = SubprocessASGIServer()  # the ephemeral API (started here if no flow ran yet)
        server.start()
        api_url = server.api_url
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_WAIT_POLICY": "PASSIVE", "PREFECT_API_URL": api_url,
                                       "PREFECT_HOME": os.environ["PREFECT_HOME"]}})
    yield ray
    ray.shutdown()


def _task_runs(flow_state) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])), limit=200)


def _shard_task_run_ids(out: dict, stage: str) -> set[str]:
    """The task runs that wrote the parts of a stage's dataset (from the shard manifests)."""
    m = artifacts.load_manifest(out[stage].uri)
    return {artifacts.load_manifest(f).task_run_id for f in m.files}


def _rows(uri: str, key: str) -> pl.DataFrame:
    return pl.read_parquet(f"{uri}/*/*.parquet").sort(key)


def test_prepare_on_ray_equals_the_default_run(tmp_path, data_dir, local_ray):
    from flows.prepare import prepare

    # The same root for both runs would make the second a cache hit: two roots, same config.
    base = ["data.shard_rows=40"]
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"run.root={tmp_path / 'threads'}", *base])
    on_ray_cfg = load_config(ROOT / "configs" / "smoke.yaml",
                             [f"run.root={tmp_path / 'ray'}", "run.task_runner=ray", *base])

    default_state = prepare(cfg, return_state=True)
    default = default_state.result()
    t0 = time.time()
    ray_state = prepare(on_ray_cfg, return_state=True)
    on_ray = ray_state.result()
    print(f"ray flow: {time.time() - t0:.1f}s")

    assert len(artifacts.load_manifest(default["docs"].uri).files) == 3  # 120 documents, 40 per shard
    for stage in ("docs", "filtered", "chunks"):
        assert on_ray[stage].content_hash == default[stage].content_hash, stage
        assert on_ray[stage].rows == default[stage].rows and on_ray[stage].stats == default[stage].stats
    chunks = _rows(on_ray["chunks"].uri, "chunk_id")
    assert chunks.height == default["chunks"].rows > 0
    assert chunks.equals(_rows(default["chunks"].uri, "chunk_id"))
    assert chunks["chunk_id"].to_list() == _rows(default["chunks"].uri, "chunk_id")["chunk_id"].to_list()
    assert _rows(on_ray["filtered"].uri, "doc_id").equals(_rows(default["filtered"].uri, "doc_id"))

    # Each filter/chunk part was written by its own mapped shard task, on Ray in worker processes.
    for out, state in ((default, default_state), (on_ray, ray_state)):
        runs = {str(r.id): r.name.rsplit("-", 1)[0] for r in _task_runs(state)}
        assert {runs[i] for i in _shard_task_run_ids(out, "filtered")} == {"filter-shard"}
        assert len(_shard_task_run_ids(out, "filtered")) == 3
        assert {runs[i] for i in _shard_task_run_ids(out, "chunks")} == {"chunk-shard"}
    assert local_ray.is_initialized()

    # A rerun on Ray reuses the committed outputs: every task a cache hit.
    again = prepare(on_ray_cfg, return_state=True)
    assert again.result() == on_ray
    assert {r.state.name for r in _task_runs(again)} == {"Cached"}
