"""Issue 13: a rewrite that echoes the prompt's markers or instructions is an error (unparseable),
never a DPO candidate, and asked again on a later run; a clean rewrite is a candidate."""

from __future__ import annotations

from fake_openai import FakeOpenAI
from llm_job_fixtures import blocks, chunks, smoke_config  # noqa: F401  (chunks: the fixture)

ECHOES = ["<<<BEGIN CONTEXT>>\n The rain stopped.",  # the smoke run's failure: a half-echoed marker
          "<<<BEGIN REWRITTEN CONTINUATION>>>\n The rain stopped.",
          " The rain stopped.\n<<<END CONTEXT C>>>",
          "Task: write a continuation of context C that is at least as good as X."]


def test_echoed_rewrites_are_unparseable_never_candidates_and_asked_again(chunks, tmp_path):
    from sip_core.augment.rewrites import rewrite_next_batch, rewrites_for
    from sip_core.infra import store
    from sip_core.infra.run_context import RunContext
    from sip_core.llm.factory import open_llm

    _, manifest = chunks
    echoed_x: set[str] = set()

    def rewriter(messages):
        x = blocks(messages)["CONTINUATION X"]
        if len(x) % 2 and not rewriter.fixed:  # about half the chunks: the rewriter echoes, whatever the seed
            echoed_x.add(x)
            return ECHOES[len(x) % len(ECHOES)]
        return " A calm and harmless sentence replaces the original text here."
    rewriter.fixed = False

    with FakeOpenAI(latency=0.0, responder=rewriter) as srv:
        cfg = smoke_config(tmp_path, srv.base_url)
        env = RunContext(cfg)
        batch = rewrite_next_batch(env, manifest, open_llm(cfg, "rewriter"), 12)
        rewriter.fixed = True
    rows = store.read_parquet(batch.manifest.files[0], env.storage_options).to_pylist()
    assert echoed_x and len(echoed_x) < len(rows)
    found, _ = rewrites_for(env, manifest)
    for row in rows:
        if row["status"] == "ok":
            assert row["chunk_id"] in found and "<<<" not in row["rewrite_text"]
        else:
            assert row["status"] == "unparseable" and "echoes" in row["error"]
            assert row["rewrite_text"] is None and row["chunk_id"] not in found
    assert sum(r["status"] == "unparseable" for r in rows) == batch.manifest.stats["status"]["unparseable"] > 0

    # the next run asks exactly the echoed chunks again (fresh seeds); their clean answers are candidates
    echoed_ids = {r["chunk_id"] for r in rows if r["status"] != "ok"}
    with FakeOpenAI(latency=0.0, responder=rewriter) as srv:
        cfg = smoke_config(tmp_path, srv.base_url)
        again = rewrite_next_batch(RunContext(cfg), manifest, open_llm(cfg, "rewriter"), len(echoed_ids))
    retried = store.read_parquet(again.manifest.files[0], env.storage_options).to_pylist()
    assert {r["chunk_id"] for r in retried} == echoed_ids and {r["status"] for r in retried} == {"ok"}
    assert echoed_ids <= set(rewrites_for(env, manifest)[0])
