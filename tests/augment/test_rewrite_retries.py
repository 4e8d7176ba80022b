"""An unparseable rewrite is an answer, never a candidate and never done: the batch commits it as
such, and the next nightly run asks exactly those chunks again with a fresh seed (a new batch
folder); a lifecycle rerun (retry_unparseable=False) counts it as answered and asks nothing."""

from __future__ import annotations

import polars as pl

from fake_openai import FakeOpenAI
from llm_job_fixtures import chunks, copy_rewriter, smoke_config  # noqa: F401  (chunks: the fixture)
from sip_core.infra.run_context import RunContext
from sip_core.llm.factory import open_llm


def _rewrite(root, url, manifest, limit):
    from sip_core.augment.rewrites import rewrite_next_batch

    cfg = smoke_config(root, url, "judge.parse_retries=0")
    return rewrite_next_batch(RunContext(cfg), manifest, open_llm(cfg, "rewriter"), limit)


def test_unparseable_rewrites_are_asked_again_with_a_fresh_seed(chunks, tmp_path):
    from sip_core.augment.rewrites import answered_chunk_ids, rewrites_for

    _, manifest = chunks
    echoes = {0, 2}  # the first and third requests echo a fence marker: unparseable

    def responder(messages):
        return "<<<BEGIN CONTINUATION X>>> junk" if responder.n in echoes else copy_rewriter(messages)

    def counted(messages):
        out = responder(messages)
        responder.n += 1
        return out

    responder.n = 0
    with FakeOpenAI(responder=counted, record_bodies=True) as srv:
        first = _rewrite(tmp_path, srv.base_url, manifest, 4)
        rows = pl.read_parquet(first.manifest.files)
        assert rows["status"].value_counts().sort("status").rows() == [("ok", 2), ("unparseable", 2)]
        retried = set(rows.filter(pl.col("status") == "unparseable")["chunk_id"].to_list())
        env = RunContext(smoke_config(tmp_path))
        assert retried.isdisjoint(rewrites_for(env, manifest)[0])  # never a candidate
        assert answered_chunk_ids(env, manifest, retry_unparseable=False) == set(rows["chunk_id"].to_list())
        assert retried.isdisjoint(answered_chunk_ids(env, manifest))

        second = _rewrite(tmp_path, srv.base_url, manifest, 2)  # the nightly job's next run
        assert srv.requests == 6  # exactly the two unparseable ones were asked again
        again = pl.read_parquet(second.manifest.files)
        assert set(again["chunk_id"].to_list()) == retried and again["status"].to_list() == ["ok", "ok"]
        assert second.manifest.uri != first.manifest.uri
        seeds = [b.get("seed") for b in srv.bodies]
        assert set(seeds[4:]).isdisjoint(seeds[:4])  # a fresh seed: the cache would answer the same
    assert retried <= answered_chunk_ids(env, manifest)
