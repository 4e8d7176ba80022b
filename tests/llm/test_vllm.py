"""Against a real vLLM server (CPU) serving SmolLM2-135M-Instruct: `make test` runs these after
`infra/vllm/setup.sh`; they are skipped when that venv is absent (e.g. `make test-fast`)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest

from fake_openai import free_port
from sip_core.config import load_config
from sip_core.llm.factory import open_llm
from sip_core.infra.run_context import RunContext
from sip_core.data.prepare import filter_documents, ingest_documents, materialize_chunks

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("SIP_VLLM_VENV", Path.home() / ".cache" / "sip" / "vllm-venv"))


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    yield from serve(tmp_path_factory.mktemp("vllm") / "server.log")


def serve(log: Path, env: dict | None = None):
    """infra/vllm/serve.sh on a free port until the generator is closed: yields its URL."""
    if not (VENV / "bin" / "python").exists():
        pytest.skip(f"vLLM venv not found at {VENV}: run infra/vllm/setup.sh")
    port = free_port()
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(ROOT / "infra" / "vllm" / "serve.sh"), str(port)], stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vLLM server exited: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=2)
            break
        except OSError:
            time.sleep(2)
    else:
        pytest.fail("vLLM server did not come up in 600 s")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(60)


def serve_checkpoint(log: Path, folder: str):
    """serve() on a checkpoint folder, answering to the folder's own name (what `<role>.model`
    names, so the card is read from the same folder)."""
    yield from serve(log, {"SIP_VLLM_MODEL": folder, "SIP_VLLM_SERVED_NAME": folder})


def smoke_cfg(root, *extra):
    """configs/smoke.yaml on 60 documents: what a served-checkpoint test trains its checkpoint on."""
    return load_config(ROOT / "configs" / "smoke.yaml", [f"run.root={root}", "data.max_docs=60", *extra])


def smoke_chunks(cfg):
    env = RunContext(cfg)
    return materialize_chunks(env, filter_documents(env, ingest_documents(env)))


def served_requests(url: str) -> float:
    """vLLM's own count of finished requests: the endpoint's word, not our client's."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(r'^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$', text, re.M))


def _cfg(root, url, *extra):
    return load_config(ROOT / "configs" / "smoke.yaml", [
        f"run.root={root}", "data.max_docs=300", f"rewriter.base_url={url}/v1", "rewriter.backend=openai",
        "rewriter.model=smollm2-135m-instruct", "rewriter.concurrency=64", "rewriter.max_tokens=48",
        f"judge.base_url={url}/v1", "judge.backend=openai", "judge.model=smollm2-135m-instruct",
        "judge.max_tokens=48", "judge.concurrency=64",
        # 64 requests at once on a busy 2-core CPU can take minutes: a client timeout would resend
        # them (the server counts both), and the test is about calls, not about timeouts.
        "rewriter.timeout_s=900", "judge.timeout_s=900", *extra])


@pytest.fixture(scope="module")
def chunks(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-run")
    env = RunContext(_cfg(root, "http://unused"))
    manifest = materialize_chunks(env, filter_documents(env, ingest_documents(env)))
    assert manifest.stats["chunks"]["train"] >= 128
    return root, manifest


def _rewrite(root, url, manifest, limit):
    from sip_core.augment.rewrites import rewrite_next_batch

    cfg = _cfg(root, url)
    llm = open_llm(cfg, "rewriter")
    return rewrite_next_batch(RunContext(cfg), manifest, llm, limit), llm


def test_rewrite_batch_of_64_then_a_rerun_makes_zero_endpoint_calls(vllm_url, chunks):
    root, manifest = chunks
    before = served_requests(vllm_url)
    batch, llm = _rewrite(root, vllm_url, manifest, 64)
    rows = pl.read_parquet(batch.manifest.files)
    assert rows.height == 64 and rows["chunk_id"].n_unique() == 64
    # every attempt the client sent (calls + its retries) is one request the server finished
    assert served_requests(vllm_url) - before == llm.calls + llm.backend.stats["retries"]
    assert llm.calls >= 64
    print("rewrite status:", batch.manifest.stats["status"], "overlap:", batch.manifest.stats["mean_overlap_by_label"])
    import shutil

    shutil.rmtree(batch.manifest.uri)  # the output is gone, the judgments are not
    again_before = served_requests(vllm_url)
    again, llm = _rewrite(root, vllm_url, manifest, 64)
    assert again.manifest.rows == 64 and llm.calls == 0 and served_requests(vllm_url) == again_before


def test_kill_9_mid_batch_then_rerun_completes_without_duplicates(vllm_url, chunks, tmp_path):
    from sip_core.llm.cache import JudgmentCache
    from sip_core.infra.run_context import RunContext

    _, manifest = chunks
    cache = JudgmentCache(RunContext(_cfg(tmp_path, vllm_url)).judgments_db)
    code = (f"from tests.llm.test_vllm import _rewrite; from sip_core.infra.artifacts import load_manifest; "
            f"_rewrite({str(tmp_path)!r}, {vllm_url!r}, load_manifest({manifest.uri!r}), 64)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"})
    deadline = time.time() + 600
    while cache.count() < 8 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stored = cache.count()
    batch, llm = _rewrite(tmp_path, vllm_url, manifest, 64)
    rows = pl.read_parquet(batch.manifest.files)
    assert rows.height == 64 and rows["chunk_id"].n_unique() == 64
    assert llm.hits >= stored - 1 and cache.count() >= 64  # what finished before the kill was not asked again


def test_audit_reveals_smollm2_position_bias(vllm_url, chunks, tmp_path):
    from sip_core.infra import store
    from sip_core.judge.audit import audit_judge, build_pairs
    from sip_core.report.summaries import audit_markdown

    root, manifest = chunks
    cfg = _cfg(tmp_path, vllm_url, "judge.audit_seeds=2", "judge.prefill=true", "judge.max_tokens=4")
    pairs = build_pairs(RunContext(cfg), manifest, 6)
    rows = [r for f in pairs.files for r in store.read_parquet(f).to_pylist()]
    report = audit_judge(rows, open_llm(cfg, "judge"), cfg.judge)
    from dataclasses import asdict

    print(audit_markdown(asdict(report)))
    assert not report.passed and report.error_rate == 0.0
    # with the answer's opening prefilled it answers in format, and a 135M model is no judge:
    # it picks one position whatever the options say
    assert report.parse_failure_rate < 0.2
    assert abs(report.position_bias - 0.5) > 0.3 and any("position bias" in r for r in report.reasons)


def prefix_cache_counters(url: str) -> tuple[float, float]:
    """(queried, hit) prompt tokens of vLLM's prefix cache so far, from its own /metrics."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf'^vllm:{name}(?:_total)?(?:\{{[^}}]*\}})? ([0-9.e+]+)$', text, re.M))

    return total("prefix_cache_queries"), total("prefix_cache_hits")


def test_all_pairs_judging_of_one_set_is_served_from_the_prefix_cache(vllm_url, tmp_path):
    """All-pairs quality judging of 9 candidates (72 requests, both orders) on a 256-token prefix:
    the system text, instructions and the document prefix come first and are the same bytes in
    every request (`shared_fields`), so vLLM prefills them once; its hit rate is read from its
    /metrics. Target vllm_prefix_cache_hit_rate >= 0.7."""
    import gzip
    import json

    from sip_core.config import LLMConfig
    from sip_core.judge.scoring import quality_pairs
    from sip_core.judge.spec import judge_spec
    from sip_core.llm.backends.openai import OpenAIBackend
    from sip_core.infra.models import resolve_model
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model("bundled:smollm2-135m-instruct"))
    from sip_core.infra.paths import default_data_dir

    path = sorted((default_data_dir() / "corpus" / "c4_sample").glob("*.json.gz"))
    docs = [tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"] for line in gzip.open(path[0], "rt")]
    docs = [d for d in docs if len(d) >= 300]
    prefix = tok.decode(docs[0][:256])
    candidates = [tok.decode(d[256:288]) for d in docs[:9]]
    cfg = _cfg(tmp_path, vllm_url, "judge.criteria={quality: 1.0}", "judge.seeds=1", "judge.quality_mode=all_pairs")
    spec = judge_spec(cfg.judge)
    requests = [spec.render("quality", {"seed": 0, "max_tokens": 1, "temperature": 0.0}, prefix=prefix,
                            option_1=candidates[a], option_2=candidates[b]) for a, b in quality_pairs(9, "all_pairs")]
    assert len(requests) == 72
    backend = OpenAIBackend(LLMConfig(backend="openai", model="smollm2-135m-instruct", base_url=f"{vllm_url}/v1",
                                      concurrency=16, timeout_s=900))
    queried0, hit0 = prefix_cache_counters(vllm_url)
    results = backend.generate(requests)
    queried, hit = (a - b for a, b in zip(prefix_cache_counters(vllm_url), (queried0, hit0)))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    rate = hit / queried if queried else 0.0
    print(f"target vllm_prefix_cache_hit_rate: {rate:.2f} (goal >= 0.7) {'ok' if rate >= 0.7 else 'BELOW'} "
          f"({int(hit)} of {int(queried)} prompt tokens)")
    assert queried > 0 and rate >= 0.7
