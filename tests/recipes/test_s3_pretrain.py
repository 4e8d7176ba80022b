"""prepare -> rewrite -> pretrain (smoke) with the artifact root on a real S3-compatible server
(moto on 127.0.0.1): checkpoints and metrics land in the bucket, lineage records s3 URIs back to
the chunks and the rewrite batch, and a checkpoint loads back from the bucket."""

from __future__ import annotations

from pathlib import Path

import pytest

from sip_core.infra import artifacts, store
from sip_core.config import SipConfig
from recipe_fixtures import prepare_chunks

try:
    from s3_server import S3Bucket, moto_server, s3  # noqa: F401  (fixtures)
except ImportError:  # tests/ imported as a package
    from tests.s3_server import S3Bucket, moto_server, s3  # noqa: F401

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def test_prepare_rewrite_pretrain_on_s3(s3: S3Bucket, tmp_path: Path) -> None:
    from sip_core.evaluation.suite import load_eval_model
    from sip_core.llm.factory import open_llm
    from sip_core.infra.run_context import RunContext
    from sip_core.recipes import pretrain
    from sip_core.augment.rewrites import rewrite_next_batch
    from sip_core.training import runtime

    cfg = SipConfig.model_validate({
        "run": {"root": s3.uri("run"), "state_dir": str(tmp_path / "state"), "storage_options": s3.storage_options},
        "data": {"max_docs": 30, "prefix_tokens": 64, "suffix_tokens": 16, "min_prefix_tokens": 16, "shard_rows": 16},
        "judge": {"backend": "proxy", "model": "none"},
        "rewriter": {"backend": "local", "max_tokens": 16},
        "pretrain": {"steps": 2, "batch_size": 2, "k_rollouts": 1, "max_prefix_tokens": 32, "checkpoint_every": 1,
                     "heldout_rows": 2, "eval_every": 2},
    })
    so = cfg.run.storage_options
    chunks = prepare_chunks(cfg)
    llm = open_llm(cfg, "rewriter")
    batch = rewrite_next_batch(RunContext(cfg), chunks, llm, limit=64)
    assert batch.manifest is not None and batch.manifest.uri.startswith(s3.uri("run/rewrites"))

    final = pretrain.train(cfg, chunks)
    assert final.uri.startswith(s3.uri("run/train")) and final.kind == "checkpoint"
    assert artifacts.load_committed(final.uri, so) == final
    assert any(f.endswith("model.safetensors") for f in final.files)
    assert store.exists(final.stats["metrics_uri"], so)
    rows = store.read_parquet(final.stats["metrics_uri"], so).to_pylist()
    assert [r["step"] for r in rows if r.get("loss") is not None] == [1, 2]
    # lineage: the checkpoint's parents are the s3 chunk artifact and the s3 rewrite batch
    assert chunks.uri in final.parent_uris and batch.manifest.uri in final.parent_uris
    kinds = {r["uri"]: r["kind"] for r in RunContext(cfg).lineage().ancestry(final.uri)}
    assert kinds[chunks.uri] == "parquet-dataset" and batch.manifest.uri in kinds
    # the checkpoint loads back from the bucket
    model, _ = load_eval_model(final.uri, cfg, runtime.setup("cpu", "fp32"))
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
