"""A `sip train-rewriter` checkpoint served by the real vLLM CPU server and used by `sip rewrite`
through the openai backend (METHOD §5.4: the trained rewriter must work both in-process and
behind an endpoint): the server is started on the checkpoint folder, under that folder's name, and
greedy rewrites over HTTP are the checkpoint's own (they match the local backend's)."""

from __future__ import annotations

import pytest

from sip_core.infra.run_context import RunContext
from test_vllm import served_requests, serve_checkpoint, smoke_cfg, smoke_chunks

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def trained_rewriter(tmp_path_factory):
    """SmolLM2 after one GRPO step on safe suffixes (exact-copy reward, no judge call): a checkpoint
    with its card (one step may have no signal, and that is allowed here); the test compares one
    checkpoint on two backends, not what it learned."""
    from sip_core.recipes import train_rewriter

    root = tmp_path_factory.mktemp("rewriter-run")
    cfg = smoke_cfg(root, "rewriter_train.data=rest", "rewriter_train.chunks=2", "rewriter_train.steps=1",
               "rewriter_train.batch_size=2", "rewriter_train.group_size=2", "rewriter_train.suffix_tokens=8",
               "rewriter_train.max_prefix_tokens=24", "rewriter_train.validation_rows=1",
               "rewriter_train.checkpoint_every=100", "rewriter_train.keep_after_finish=0",
               "rewriter_train.device=cpu", "rewriter_train.precision=fp32",
               "rewriter_train.allow_no_update=true")  # the checkpoint is what is served, learned or not
    chunks = smoke_chunks(cfg)
    return train_rewriter.train(cfg, chunks), chunks


@pytest.fixture(scope="module")
def rewriter_url(tmp_path_factory, trained_rewriter):
    final, _ = trained_rewriter
    yield from serve_checkpoint(tmp_path_factory.mktemp("vllm-rewriter") / "server.log", final.uri)


def test_a_served_trained_rewriter_rewrites_through_the_openai_backend(trained_rewriter, rewriter_url, tmp_path):
    from sip_core.augment.rewrites import rewrite_next_batch
    from sip_core.infra import store
    from sip_core.llm.factory import open_llm

    final, chunks = trained_rewriter
    common = [f"rewriter.model={final.uri}", "rewriter.max_tokens=12", "rewriter.temperature=0"]
    served = smoke_cfg(tmp_path / "served", "rewriter.backend=openai", f"rewriter.base_url={rewriter_url}/v1",
                  "rewriter.timeout_s=600", *common)
    local = smoke_cfg(tmp_path / "local", "rewriter.backend=local", *common)
    before = served_requests(rewriter_url)
    llm = open_llm(served, "rewriter")
    over_http = rewrite_next_batch(RunContext(served), chunks, llm, limit=3)
    sent = served_requests(rewriter_url) - before
    assert sent == llm.calls >= 3  # the server answered every call (an unparseable one is asked again)
    assert over_http.manifest is not None and over_http.manifest.stats["rows"] == 3
    assert over_http.manifest.config["rewriter"]["model"] == final.uri
    assert over_http.manifest.stats["status"].get("error", 0) == 0
    # the same requests in-process and over HTTP (served answers come back from the cache: no new call)
    from sip_core.augment.rewrites import rewrite_request
    from sip_core.llm.prompting import load_prompt

    rows = store.read_parquet(over_http.manifest.files[0], columns=["chunk_id"]).to_pylist()
    by_id = {r["chunk_id"]: r for f in chunks.files for r in store.read_parquet(f).to_pylist()}
    requests = [rewrite_request(load_prompt("rewrite"), by_id[r["chunk_id"]]) for r in rows]
    http = open_llm(served, "rewriter").run_parsed(requests, 0)
    assert served_requests(rewriter_url) - before == sent
    here = open_llm(local, "rewriter").run_parsed(requests, 0)
    assert all(j.text for j in http + here), [(j.status, j.error) for j in http + here]
    # greedy decoding of the same weights: the served rewrites are the checkpoint's (the CPU server's
    # bf16 and fp32 here may part after a few tokens, so compare the opening)
    same = sum(a.text[:12] == b.text[:12] for a, b in zip(http, here))
    assert same >= 2, [(a.text, b.text) for a, b in zip(http, here)]
