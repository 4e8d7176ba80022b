"""`pretrain.data` (issue 13): which filter partitions a recipe trains on, read from the label each
chunk carries; an empty or too small partition is one line with the counts (exit 2), never an
empty training."""

from __future__ import annotations

import pytest

from conftest import DATA, POLICY, c4_records, write_jsonl_gz
from sip_core.config import ConfigError, load_config
from sip_core.infra.run_context import RunContext


def _prepare(root, source):
    from sip_core.data.prepare import filter_documents, ingest_documents, materialize_chunks

    cfg = load_config(None, [f"run.root={root}", f"data.source={source}", "data.suffix_tokens=32",
                             "data.prefix_tokens=64", "data.min_prefix_tokens=16", f"model.policy={POLICY}"])
    env = RunContext(cfg)
    return cfg, materialize_chunks(env, filter_documents(env, ingest_documents(env)))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(cfg, chunks) of C4 text with four planted unsafe documents, and (cfg, chunks) of clean C4."""
    terms = [t.strip() for t in (DATA / "safety/wordlists/ldnoobw/en.txt").read_text().splitlines()]
    bad = [t for t in terms if t.isalpha() and len(t) > 4][:6]
    clean = [{"id": f"c4-{i}", **r} for i, r in enumerate(c4_records(40))]
    planted = []
    for j in range(4):
        words = clean[j]["text"].split()
        for k, w in enumerate(bad):
            words.insert((k + 1) * max(1, len(words) // 7), w)
        planted.append({"id": f"planted-unsafe-{j}", "text": " ".join(words), "url": "http://example.org/x"})
    base = tmp_path_factory.mktemp("partitions")
    mixed = _prepare(base / "mixed", write_jsonl_gz(base / "mixed.jsonl.gz", clean + planted))
    only_clean = _prepare(base / "clean", write_jsonl_gz(base / "clean.jsonl.gz", clean))
    return mixed, only_clean


def test_partitions_select_chunks_by_their_filter_label(prepared):
    from sip_core.training.data import label_counts, read_chunk_rows

    (cfg, chunks), _ = prepared
    so = cfg.run.storage_options
    counts = label_counts(chunks, "train", so)
    rows = {p: read_chunk_rows(chunks, "train", so, ["chunk_id", "doc_id"], p) for p in ("all", "unsafe", "rest")}
    assert len(rows["unsafe"]) == counts["unsafe"] > 0
    assert all(d.startswith("planted-unsafe-") for d in rows["unsafe"].columns["doc_id"])
    assert not any(d.startswith("planted-unsafe-") for d in rows["rest"].columns["doc_id"])
    assert len(rows["all"]) == sum(counts.values()) == len(rows["unsafe"]) + len(rows["rest"])
    assert list(rows["unsafe"].columns) == ["chunk_id", "doc_id"]  # the label column is read, not returned


def test_partition_check_gives_one_line_with_the_counts(prepared):
    from sip_core.training.data import PartitionTooSmall, check_partition

    (cfg, chunks), (clean_cfg, clean_chunks) = prepared
    so = cfg.run.storage_options
    cfg.pretrain.data = "unsafe"
    n = check_partition(chunks, cfg.pretrain, so)
    assert n > 0
    cfg.pretrain.batch_size, cfg.pretrain.grad_accum = n, 2
    with pytest.raises(PartitionTooSmall) as too_small:
        check_partition(chunks, cfg.pretrain, so)
    assert f"has {n} selected chunks" in str(too_small.value) and f"global batch of {2 * n}" in str(too_small.value)
    clean_cfg.pretrain.data = "unsafe"
    with pytest.raises(ConfigError) as empty:
        check_partition(clean_chunks, clean_cfg.pretrain, so)
    message = str(empty.value)
    assert "\n" not in message and "stage 1 flagged nothing" in message and "has 0 selected chunks" in message
    assert "rest " in message  # the counts by label
    clean_cfg.pretrain.data = "all"
    assert check_partition(clean_chunks, clean_cfg.pretrain, so) > 0


def test_the_partition_is_part_of_the_run_key_and_lineage(prepared):
    from sip_core.training.session import run_key

    (cfg, chunks), _ = prepared
    keys = {}
    for partition in ("all", "unsafe"):
        cfg.pretrain.data = partition
        keys[partition] = run_key(RunContext(cfg), "pretrain-dpo", cfg.pretrain, [chunks])
    assert keys["unsafe"]["train"]["data"] == "unsafe" and keys["unsafe"] != keys["all"]


@pytest.mark.slow  # a Prefect flow, prepare and the recipe process: ~2 min on the loaded 2-core machine
def test_sip_pretrain_on_a_corpus_stage_1_does_not_flag_is_one_line_exit_2(tmp_path):
    """The bundled C4 sample has no stage-1 unsafe document: a safety run stops before any model loads."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "flows.cli", "pretrain", "--config", str(root / "configs" / "smoke.yaml"),
           "--set", f"run.root={tmp_path}", "--set", "pretrain.data=unsafe"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root)
    errors = [line for line in res.stderr.splitlines() if line.startswith("sip: error:")]
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(errors) == 1 and "pretrain.data=unsafe" in errors[0] and "stage 1 flagged nothing" in errors[0]
    assert "Traceback" not in res.stderr and not list(tmp_path.rglob("model.safetensors"))


def test_the_rewrite_job_rewrites_the_partition_pretraining_reads(prepared, tmp_path):
    """A safety run's SIP needs rewrites of its unsafe chunks: with pretrain.data=unsafe the job
    asks about those alone, and is then done; with all it asks about every train chunk."""
    import polars as pl

    from fake_openai import FakeOpenAI
    from llm_job_fixtures import copy_rewriter
    from sip_core.augment.rewrites import rewrite_next_batch
    from sip_core.llm.factory import open_llm
    from sip_core.training.data import label_counts

    (cfg, chunks), _ = prepared
    counts = label_counts(chunks, "train", cfg.run.storage_options)
    unsafe = counts["unsafe"]
    with FakeOpenAI(latency=0.0, responder=copy_rewriter) as srv:
        for partition in ("unsafe", "all"):
            run = cfg.replace({"run.root": str(tmp_path / partition), "pretrain.data": partition,
                               "rewriter.backend": "openai", "rewriter.model": "fake",
                               "rewriter.base_url": srv.base_url})
            batch = rewrite_next_batch(RunContext(run), chunks, open_llm(run, "rewriter"), 1000)
            labels = {r["filter_label"] for r in pl.read_parquet(batch.manifest.files).to_dicts()}
            if partition == "unsafe":
                assert batch.manifest.rows == unsafe and labels == {"unsafe"} and batch.remaining == 0
                assert srv.requests == unsafe
            else:
                assert batch.manifest.rows == sum(counts.values()) and labels == set(counts)
