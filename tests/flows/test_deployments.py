"""Deployments for real: a local Prefect server and a process worker on 127.0.0.1, `prefect deploy
--all`, the nightly-rewrite schedule, and one triggered run of it that completes; the scale-out
deployments on Kubernetes/Docker pools made from infra/pools/*.json on the same server. Fast checks
of the infra files (pool templates against the worker types' defaults, compose, the k8s judge)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from fake_openai import FakeOpenAI, free_port
from sip_core.config import load_config
from llm_job_fixtures import copy_rewriter

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")
INFRA = ROOT / "infra"
# Every flow and where it is deployed: (entrypoint, local deployment, scale-out deployments).
FLOWS = {
    "flows/prepare.py:prepare": ("prepare", ["prepare-docker", "prepare-k8s"]),
    "flows/llm_jobs.py:rewrite": ("nightly-rewrite", ["nightly-rewrite-docker"]),
    "flows/llm_jobs.py:thoughts": ("thoughts", ["thoughts-docker"]),
    "flows/llm_jobs.py:audit": ("audit-judge", ["audit-judge-docker"]),
    "flows/train.py:pretrain": ("pretrain", ["pretrain-gpu"]),
    "flows/train.py:midtrain": ("midtrain", ["midtrain-gpu"]),
    "flows/evaluate.py:evaluate": ("evaluate", ["evaluate-gpu"]),
    "flows/lifecycle.py:lifecycle": ("lifecycle", ["lifecycle-gpu"]),
    "flows/train_judge.py:train_judge": ("train-judge", ["train-judge-gpu"]),
    "flows/train_rewriter.py:train_rewriter": ("train-rewriter", ["train-rewriter-gpu"]),
}
TORCHRUN_STAGES = {"flows/train.py:pretrain": ["pretrain"], "flows/train.py:midtrain": ["sft", "rlmt"],
                   "flows/evaluate.py:evaluate": [], "flows/lifecycle.py:lifecycle": ["pretrain", "sft", "rlmt"],
                   "flows/train_judge.py:train_judge": ["judge_train"],
                   "flows/train_rewriter.py:train_rewriter": ["rewriter_train"]}
POOLS = {"sip-docker": ("docker", "docker.json"), "sip-k8s": ("kubernetes", "kubernetes.json"),
         "sip-k8s-gpu": ("kubernetes", "kubernetes-gpu.json")}


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def deployments(path: Path) -> dict[str, dict]:
    return {d["name"]: d for d in load_yaml(path)["deployments"]}


# --- fast checks of the files --------------------------------------------------------------------


def test_every_flow_has_a_local_deployment_with_tags_and_a_concurrency_limit():
    local = deployments(ROOT / "prefect.yaml")
    assert {d["entrypoint"]: name for name, d in local.items()} == {e: v[0] for e, v in FLOWS.items()}
    for name, d in local.items():
        assert d["work_pool"]["name"] == "sip-process", name  # `prefect deploy --all` needs only this pool
        assert "sip" in d["tags"] and len(d["tags"]) >= 2, name
        limit = d["concurrency_limit"]
        assert (limit if isinstance(limit, int) else limit["limit"]) >= 1, name
    assert local["nightly-rewrite"]["schedules"][0]["cron"] == "0 2 * * *"


def test_scale_out_deployments_put_training_on_gpu_pods_with_one_process_per_gpu():
    scale = deployments(INFRA / "prefect-scale.yaml")
    expected = {name: e for e, v in FLOWS.items() for name in v[1]}
    assert {name: d["entrypoint"] for name, d in scale.items()} == expected
    for name, d in scale.items():
        pool = d["work_pool"]
        assert pool["name"] in POOLS and d["tags"] and d["concurrency_limit"], name
        if name.endswith("-gpu"):
            gpus = pool["job_variables"]["gpus"]
            assert pool["name"] == "sip-k8s-gpu" and gpus >= 1, name
            params = d["parameters"]["params"]
            # torchrun starts nproc_per_node processes, one per GPU the pod gets.
            cfg = load_config(ROOT / params["config_file"], params.get("overrides", []))
            for stage in TORCHRUN_STAGES[d["entrypoint"]]:
                assert getattr(cfg, stage).nproc_per_node == gpus, (name, stage)
        else:
            assert pool["name"] in ("sip-docker", "sip-k8s"), name
    for d in ("pretrain-gpu", "midtrain-gpu"):
        assert scale[d]["work_pool"]["job_variables"]["gpus"] > 1
    # Flow runs start in the image's working directory, where infra/Dockerfile puts the project.
    pull = load_yaml(INFRA / "prefect-scale.yaml")["pull"][0]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == "/opt/sip"
    assert "WORKDIR /opt/sip" in (INFRA / "Dockerfile").read_text()


def _placeholders(node) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(_placeholders(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_placeholders(v) for v in node)) if node else set()
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", node)) if isinstance(node, str) else set()


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_pool_templates_extend_the_worker_default(pool):
    kind, filename = POOLS[pool]
    template = json.loads((INFRA / "pools" / filename).read_text())
    variables = template["variables"]["properties"]
    assert _placeholders(template["job_configuration"]) <= set(variables)  # what the server checks
    worker = {"kubernetes": "prefect_kubernetes.worker", "docker": "prefect_docker.worker"}[kind]
    module = pytest.importorskip(worker, reason=f"{worker} not installed (pip install -e '.[dev]')")
    worker_cls = module.KubernetesWorker if kind == "kubernetes" else module.DockerWorker
    default = worker_cls.get_default_base_job_template()
    # Everything the worker type configures is still there: every variable, every job field.
    assert set(default["variables"]["properties"]) <= set(variables)
    assert set(default["job_configuration"]) <= set(template["job_configuration"])
    for name, spec in default["variables"]["properties"].items():
        assert variables[name].get("type") == spec.get("type"), name

    # Render it the way the worker does for a flow run (defaults plus a deployment's job variables).
    from prefect.client.schemas.objects import FlowRun
    from uuid import uuid4

    values = {"gpus": 4, "env": {"HF_TOKEN": "x"}} if pool == "sip-k8s-gpu" else {}
    config = asyncio.run(worker_cls.job_configuration.from_template_and_values(template, values, client=object()))
    config.prepare_for_flow_run(FlowRun(id=uuid4(), name="run", flow_id=uuid4()))
    if kind == "docker":
        assert config.image == "sip:latest" and "sip" in config.networks
        assert any(v.endswith(":/opt/sip/runs") for v in config.volumes)
        return
    job = config.job_manifest
    assert job["kind"] == "Job" and job["spec"]["completions"] == 1
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["prefect", "flow-run", "execute"]
    if pool == "sip-k8s-gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
        assert container["resources"]["requests"]["nvidia.com/gpu"] == 4
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert {"name": "HF_TOKEN", "value": "x"} in container["env"]
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    else:
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def test_compose_has_server_on_postgres_a_worker_and_a_judge():
    compose = load_yaml(INFRA / "compose.yaml")
    services = compose["services"]
    assert {"postgres", "server", "deploy", "worker", "judge", "judge-cpu"} <= set(services)
    server = services["server"]
    assert server["image"].startswith("prefecthq/prefect:3.8.")
    assert "@postgres:5432/" in server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "127.0.0.1:${SIP_PORT:-4200}:4200" in server["ports"]
    for name in ("deploy", "worker", "docker-worker"):
        assert services[name]["environment"]["PREFECT_API_URL"] == "http://server:4200/api"
        assert services[name]["image"] == "${SIP_IMAGE:-sip:latest}"
    assert services["deploy"]["build"]["dockerfile"] == "infra/Dockerfile"
    assert services["worker"]["depends_on"]["deploy"]["condition"] == "service_completed_successfully"
    assert "sip-process" in services["worker"]["command"]
    gpu = services["judge"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "deploy" not in services["judge-cpu"]
    assert "judge" in services["judge-cpu"]["networks"]["sip"]["aliases"]  # same URL either way
    for judge in ("judge", "judge-cpu"):
        args = services[judge]["command"]
        assert args[args.index("--served-model-name") + 1] == "judge"
    # The Docker pool's flow-run containers join this network and these volumes by name.
    docker_vars = json.loads((INFRA / "pools" / "docker.json").read_text())["variables"]["properties"]
    assert compose["networks"]["sip"]["name"] in docker_vars["networks"]["default"]
    named = {v["name"] for v in compose["volumes"].values() if v and "name" in v}
    assert {v.split(":")[0] for v in docker_vars["volumes"]["default"]} <= named


def test_k8s_judge_replicas_behind_one_service():
    docs = [d for d in yaml.safe_load_all((INFRA / "k8s" / "vllm-judge.yaml").read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    services = [d for d in docs if d["kind"] == "Service"]
    assert deployment["apiVersion"] == "apps/v1" and deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert "--served-model-name=judge" in container["args"]
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert f"--port={port['containerPort']}" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert any(s["metadata"]["name"] == "vllm-judge" for s in services)
    for service in services:
        assert service["metadata"]["namespace"] == deployment["metadata"]["namespace"]
        assert service["spec"]["selector"].items() <= labels.items()  # selects the judge pods
        assert service["spec"]["ports"][0]["targetPort"] in (port["name"], port["containerPort"])


def test_dockerfile_installs_cpu_torch_pinned():
    text = (INFRA / "Dockerfile").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in text and "download.pytorch.org/whl/cpu" in text
    assert re.search(r'pip install "torch==\$\{TORCH_VERSION\}"', text)


# --- a real server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "SIP_PROJECT_DIR": str(ROOT),
           "PREFECT_SERVER_API_HOST": "127.0.0.1"}
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
            time.sleep(1)
    yield env
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(60)


def prefect(env, *args, timeout=300):
    res = subprocess.run([PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"prefect {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.mark.slow
def test_deploy_all_then_a_triggered_nightly_rewrite_completes(server, tmp_path):
    env = server
    prefect(env, "work-pool", "create", "sip-process", "--type", "process")
    prefect(env, "--no-prompt", "deploy", "--all")
    listed = prefect(env, "deployment", "ls")
    for name in ("prepare/prepare", "rewrite/nightly-rewrite", "thoughts/thoughts", "audit-judge/audit-judge"):
        assert name in listed
    on_process = [d for d in json.loads(prefect(env, "deployment", "ls", "--output", "json"))
                  if d["work_pool_name"] == "sip-process"]
    assert sorted(d["name"] for d in on_process) == sorted(v[0] for v in FLOWS.values())
    inspected = prefect(env, "deployment", "inspect", "rewrite/nightly-rewrite")
    assert "0 2 * * *" in inspected and "'limit': 256" in inspected

    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "sip-process"], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with FakeOpenAI(responder=copy_rewriter) as endpoint:
            params = {"params": {"config_file": "configs/smoke.yaml", "limit": 5, "overrides": [
                f"run.root={tmp_path}", "rewriter.backend=openai", f"rewriter.base_url={endpoint.base_url}",
                "rewriter.model=fake"]}}
            out = prefect(env, "deployment", "run", "rewrite/nightly-rewrite", "--params", json.dumps(params),
                          "--watch", "--watch-timeout", "400", timeout=450)
            assert endpoint.requests == 5
        assert "Completed" in out
        batches = list((tmp_path / "rewrites").glob("*/batch-*/_manifest.json"))
        assert len(batches) == 1 and json.loads(batches[0].read_text())["rows"] == 5
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)


@pytest.mark.slow
def test_scale_out_pools_from_the_templates_and_their_deployments(server):
    """The server accepts the pool templates (it checks every placeholder is a declared variable),
    and `prefect deploy` of infra/prefect-scale.yaml puts each deployment on its pool."""
    env = server
    api = env["PREFECT_API_URL"]
    for pool, (kind, filename) in POOLS.items():  # the REST call `prefect work-pool create` makes
        template = json.loads((INFRA / "pools" / filename).read_text())
        body = json.dumps({"name": pool, "type": kind, "base_job_template": template}).encode()
        request = urllib.request.Request(f"{api}/work_pools/", body, {"Content-Type": "application/json"})
        created = json.load(urllib.request.urlopen(request, timeout=30))
        assert created["type"] == kind and created["base_job_template"] == template
    bad = {"job_configuration": {"image": "{{ undeclared }}"}, "variables": {"type": "object", "properties": {}}}
    body = json.dumps({"name": "bad", "type": "kubernetes", "base_job_template": bad}).encode()
    with pytest.raises(urllib.error.HTTPError) as rejected:  # so the acceptance above means something
        urllib.request.urlopen(urllib.request.Request(f"{api}/work_pools/", body, {"Content-Type": "application/json"}))
    assert rejected.value.code == 422
    prefect(env, "--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect-scale.yaml")
    deployed = {d["name"]: d for d in json.loads(prefect(env, "deployment", "ls", "--output", "json"))}
    for name, d in deployments(INFRA / "prefect-scale.yaml").items():
        assert deployed[name]["work_pool_name"] == d["work_pool"]["name"], name
        assert deployed[name]["job_variables"] == d["work_pool"].get("job_variables", {}), name
