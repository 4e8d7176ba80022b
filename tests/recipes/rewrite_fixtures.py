"""A committed rewrite batch in the real rewrite artifact layout, with chosen rewrites, for the
recipes that read rewrites (the rewriter itself is tested in tests/augment)."""

from __future__ import annotations

import pyarrow as pa


def write_rewrites(cfg, chunks, text: str, ids: list[int], keep=lambda index: True) -> list[str]:
    """Every train chunk whose index passes `keep` gets the rewrite `text` / `ids`; the chunk ids
    that got one."""
    from sip_core.augment.rewrites import REWRITE_SCHEMA
    from sip_core.infra import artifacts, store
    from sip_core.infra.artifacts import DatasetWriter
    from sip_core.infra.run_context import RunContext

    env = RunContext(cfg)
    rows = pa.concat_tables([store.read_parquet(f, {}) for f in artifacts.shard_uris(chunks, "train")]).to_pylist()
    rows = [r for i, r in enumerate(rows) if keep(i)]
    n = len(rows)
    cols = dict(chunk_id=[r["chunk_id"] for r in rows], doc_id=[r["doc_id"] for r in rows],
                filter_label=[r["filter_label"] for r in rows], suffix_text=[r["suffix_text"] for r in rows],
                rewrite_text=[text] * n, rewrite_ids=[ids] * n, token_overlap=[0.0] * n,
                is_copy=[False] * n, status=["ok"] * n, error=[None] * n, judgment_key=["k"] * n,
                prompt=["rewrite@test"] * n, model_id=["rigged"] * n)
    uri = store.join(str(cfg.run.root), "rewrites", "rigged", "batch-0000")
    with DatasetWriter(uri, env.context({"test": "rigged"}, [chunks]), schema=REWRITE_SCHEMA) as writer:
        writer.write(pa.Table.from_pydict(cols, schema=REWRITE_SCHEMA))
        writer.commit({})
    return cols["chunk_id"]
