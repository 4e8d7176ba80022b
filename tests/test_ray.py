"""The rule filter mapped over document shards on a real local Ray cluster (prefect-ray's
RayTaskRunner) gives exactly the default run's labels.

The prepare flow does not map over shards yet (each stage is one task over the whole dataset), so
the flow here maps the library's per-document rule stage over the shards of a committed `docs`
artifact, the way a sharded filter task would. Ray runs with 2 CPUs and a 200 MB object store.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
prefect_ray = pytest.importorskip("prefect_ray", reason="prefect-ray is not installed (pip install -e '.[ray]')")

from prefect import flow, task, unmapped  # noqa: E402

from sip_core import artifacts, store  # noqa: E402
from sip_core.config import load_config  # noqa: E402
from sip_core.documents import Document  # noqa: E402
from sip_core.filters import run_stages  # noqa: E402
from sip_core.prepare import StageEnv, build_rule_stage, filter_documents, ingest_documents  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@task(name="filter-shard")
def filter_shard(cfg, shard_uri: str) -> dict:
    """One docs shard through the rule stage: (doc_id, label, reason) per document, in order, and
    the process that did it."""
    table = store.read_parquet(shard_uri, cfg.run.storage_options)
    docs = (Document(id=r["doc_id"], text=r["text"], source=r["source"], meta=json.loads(r["meta_json"]))
            for r in table.to_pylist())
    stage = build_rule_stage(StageEnv(cfg))
    return {"pid": os.getpid(), "rows": [(doc.id, v.label, v.reason) for doc, v in run_stages([stage], docs)]}


@flow(name="filter-shards")
def filter_shards(cfg, shards: list[str]) -> tuple[list[tuple[str, str, str | None]], set[int]]:
    results = filter_shard.map(unmapped(cfg), shards).result()
    return [tuple(row) for r in results for row in r["rows"]], {r["pid"] for r in results}


def ray_runner():
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL
    from prefect_ray import RayTaskRunner

    # Ray workers are fresh interpreters: give them this module (tests/), the checkout, and the API
    # this process uses (its ephemeral server; else each worker would start one of its own).
    path = os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    api_url = PREFECT_API_URL.value() or SubprocessASGIServer().api_url
    return RayTaskRunner(init_kwargs={
        "num_cpus": 2, "object_store_memory": 200 * 1024**2, "include_dashboard": False,
        "runtime_env": {"env_vars": {"PYTHONPATH": path, "OMP_WAIT_POLICY": "PASSIVE", "PREFECT_API_URL": api_url,
                                     "PREFECT_HOME": os.environ["PREFECT_HOME"]}},
        "logging_level": "WARNING"})


def test_shard_map_on_ray_equals_the_default_run(tmp_path, data_dir):
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"run.root={tmp_path}", "data.shard_rows=40"])
    env = StageEnv(cfg)
    docs = ingest_documents(env)
    shards = artifacts.shard_uris(docs)
    assert len(shards) == 3  # 120 documents, 40 per shard

    default, default_pids = filter_shards(cfg, shards)
    t0 = time.time()
    on_ray, ray_pids = filter_shards.with_options(task_runner=ray_runner())(cfg, shards)
    print(f"ray flow: {time.time() - t0:.1f}s")

    assert default_pids == {os.getpid()}  # the default runner: threads of this process
    assert ray_pids and os.getpid() not in ray_pids  # Ray: worker processes
    assert on_ray == default
    # ... and both agree with the library's own (unsharded) filter stage.
    filtered = filter_documents(env, docs)
    expected = {}
    for shard in artifacts.shard_uris(filtered):
        for r in store.read_parquet(shard, cfg.run.storage_options, columns=["doc_id", "label", "reason"]).to_pylist():
            expected[r["doc_id"]] = (r["label"], r["reason"])
    assert {doc_id: (label, reason) for doc_id, label, reason in on_ray} == expected
    assert len(on_ray) == len(expected) == docs.rows
