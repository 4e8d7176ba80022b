"""The data flow end to end: a real Prefect run, real files, a real DuckDB lineage file."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time

import polars as pl
import pytest

from conftest import DATA, POLICY, c4_records, write_jsonl_gz
from sip_core.config import load_config
from sip_core.data import rule_workers
from sip_core.infra.run_context import RunContext

N = 32


def _badwords(k: int) -> list[str]:
    terms = [t.strip() for t in (DATA / "safety/wordlists/ldnoobw/en.txt").read_text().splitlines()]
    return [t for t in terms if t.isalpha() and len(t) > 4][:k]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """C4 web text plus planted cases: unsafe documents, a short unsafe one, and broken records."""
    records = [{"id": f"c4-{i}", **r} for i, r in enumerate(c4_records(150))]
    bad = _badwords(6)
    for j in range(3):  # >= 5 LDNOOBW words spread over an otherwise normal long document
        words = records[j]["text"].split()
        step = max(1, len(words) // 7)
        for k, w in enumerate(bad):
            words.insert((k + 1) * step, w)
        records.append({"id": f"planted-unsafe-{j}", "text": " ".join(words), "url": "http://example.org/x"})
    records.append({"id": "planted-short", "text": " ".join(bad) + " is all this says.", "url": "http://e.org"})
    records.append({"id": "empty", "text": "   "})
    records.append({"id": "no-text", "body": "wrong field"})
    raw = [b'{"id": "latin1", "text": "caf\xe9 ' + b"word " * 300 + b'"}', b'{"id": "broken", "text": "unterminated']
    return write_jsonl_gz(tmp_path_factory.mktemp("corpus") / "web.jsonl.gz", records, raw)


def _cfg(root, corpus, *extra):
    return load_config(None, [f"run.root={root}", f"data.source={corpus}", f"data.suffix_tokens={N}",
                              "data.prefix_tokens=96", "data.min_prefix_tokens=16", "data.shard_rows=40",
                              f"model.policy={POLICY}", *extra])


def _task_states(flow_state) -> dict[str, str]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from prefect.client.schemas.sorting import TaskRunSort

    # Task states reach the server as events: give the last ones a moment.
    deadline = time.monotonic() + 15
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=50)
            if all(r.state and r.state.is_final() for r in runs) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    return {r.task_key.split(".")[-1].split("-")[0] + ":" + r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, corpus):
    from flows.prepare import prepare

    root = tmp_path_factory.mktemp("run")
    cfg = _cfg(root, corpus)
    return cfg, prepare(cfg)


def test_chunks_have_exactly_n_suffix_tokens_and_split_by_document(first_run):
    _, out = first_run
    chunks = pl.read_parquet(f"{out['chunks'].uri}/*/*.parquet")
    assert chunks.height == out["chunks"].rows > 100
    assert chunks["suffix_ids"].list.len().unique().to_list() == [N]
    assert chunks["chunk_id"].n_unique() == chunks.height
    train = set(chunks.filter(pl.col("split") == "train")["doc_id"])
    held = set(chunks.filter(pl.col("split") == "heldout")["doc_id"])
    assert held and not train & held


def test_bad_records_are_counted_not_fatal(first_run):
    _, out = first_run
    assert out["docs"].stats["skipped"] == {"non_utf8": 1, "malformed_json": 1, "empty_text": 1,
                                               "missing_text": 1}
    assert out["docs"].stats["documents"] == 154


def test_unsafe_partition_holds_every_badword_document_that_passes_quality(first_run):
    _, out = first_run
    filtered = pl.read_parquet(f"{out['filtered'].uri}/*/*.parquet")
    unsafe = filtered.filter(pl.col("label") == "unsafe")
    assert {f"planted-unsafe-{j}" for j in range(3)} <= set(unsafe["doc_id"])
    for signals in unsafe["signals_json"]:
        assert json.loads(signals)["rps_doc_ldnoobw_words"] >= 5
    short = filtered.filter(pl.col("doc_id") == "planted-short").row(0, named=True)
    assert short["label"] == "excluded" and short["reason"].startswith("word_count<")
    stats = out["filtered"].stats
    assert stats["labels"]["unsafe"] == unsafe.height
    assert sum(stats["labels"].values()) == filtered.height == 154
    # unsafe documents are flagged on their chunks too
    chunks = pl.read_parquet(f"{out['chunks'].uri}/*/*.parquet")
    assert set(chunks.filter(pl.col("filter_label") == "unsafe")["doc_id"]) <= set(unsafe["doc_id"])


def test_manifests_carry_hashes_schema_config_code_and_run_ids(first_run):
    from sip_core.infra.artifacts import load_manifest

    _, out = first_run
    m = load_manifest(out["chunks"].uri)
    assert m.rows == out["chunks"].rows and len(m.content_hash) == 64
    assert m.columns["suffix_ids"] == "list<item: int32>" and m.config["data"]["suffix_tokens"] == N
    assert m.flow_run_id and m.task_run_id and m.code_version.startswith("0.")
    assert m.parents == [out["filtered"].artifact_id]
    shard = load_manifest(m.files[0])
    assert shard.kind == "parquet-shard" and shard.part_of == m.artifact_id


def test_rerun_is_a_cache_hit_and_a_changed_config_is_not(first_run, corpus):
    from flows.prepare import prepare

    cfg, out = first_run
    again = prepare(cfg, return_state=True)
    assert again.result()["chunks"].uri == out["chunks"].uri
    assert set(_task_states(again).values()) == {"Cached"}
    changed = cfg.model_copy(deep=True)
    changed.filter.min_badwords = 3
    state = prepare(changed, return_state=True)
    states = _task_states(state)
    assert states["ingest_task:ingest-documents"] == "Cached"
    assert states["filter_task:filter-documents"] == "Completed"
    assert states["filter_shard_task:filter-shard"] == "Completed"
    assert state.result()["filtered"].uri != out["filtered"].uri


def test_filter_and_chunk_are_mapped_over_shards(first_run):
    """One filter-shard task per docs shard and one chunk-shard task per chunked filtered shard,
    each writing its own parts; the stage tasks only commit them."""
    from sip_core.infra.artifacts import load_manifest

    _, out = first_run
    docs, filtered, chunks = (load_manifest(out[k].uri) for k in ("docs", "filtered", "chunks"))
    assert len(docs.files) == 4  # 154 documents, 40 per shard
    writers = {load_manifest(f).task_run_id for f in filtered.files}
    assert len(writers) == len(docs.files) and filtered.task_run_id not in writers
    for f in filtered.files:  # <label>/part-<docs shard>-<k>.parquet, labels in order, shards in order
        assert f.rsplit("/", 2)[1] in ("unsafe", "rest", "excluded") and f.endswith("-00000.parquet")
    labels = [f.rsplit("/", 2)[1] for f in filtered.files]
    assert labels == sorted(labels, key=["unsafe", "rest", "excluded"].index)
    assert len({load_manifest(f).task_run_id for f in chunks.files}) > 1
    assert {load_manifest(f).part_of for f in filtered.files} == {filtered.artifact_id}


def test_ids_are_identical_across_runs_into_fresh_roots(first_run, corpus, tmp_path):
    from sip_core.infra.run_context import RunContext
    from sip_core.data.prepare import filter_documents, ingest_documents, materialize_chunks

    _, out = first_run
    env = RunContext(_cfg(tmp_path / "other", corpus))
    again = materialize_chunks(env, filter_documents(env, ingest_documents(env)))
    ids = lambda uri: pl.read_parquet(f"{uri}/*/*.parquet").sort("chunk_id")["chunk_id"].to_list()
    assert ids(again.uri) == ids(out["chunks"].uri)
    assert again.uri != out["chunks"].uri


def test_lineage_names_the_source_file_and_config(first_run, corpus):
    cfg, out = first_run
    from sip_core.infra.artifacts import load_manifest

    shard = load_manifest(out["chunks"].uri).files[0]
    res = subprocess.run([sys.executable, "-m", "flows.cli", "lineage", "--set", f"run.root={cfg.run.root}", shard],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert str(corpus) in res.stdout and f"data.suffix_tokens={N}" in res.stdout
    assert res.stdout.index("chunks-") < res.stdout.index("filtered-") < res.stdout.index("docs-")


def _sip(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, fragment", [
    (["prepare", "--set", "data.source=/no/such/file.jsonl.gz"], "no file matches"),
    (["prepare", "--set", "data.nope=1"], "unknown config key: data.nope"),
    (["prepare", "--config", "/no/such.yaml"], "config file not found"),
    (["prepare", "--set", "model.policy=./no-such-model"], "model folder not found"),
])
def test_cli_bad_input_is_one_line(args, fragment, tmp_path):
    res = _sip(*args, "--set", f"run.root={tmp_path}")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and fragment in res.stderr
    assert not (tmp_path / "prepare").exists()


def test_corrupt_source_leaves_no_partial_output(tmp_path, corpus):
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(corpus.read_bytes()[: len(corpus.read_bytes()) // 2])
    res = _sip("prepare", "--set", f"run.root={tmp_path / 'run'}", "--set", f"data.source={broken}")
    assert res.returncode == 2
    assert any(line.startswith("sip: error: data.source:") for line in res.stderr.splitlines())
    assert "Traceback" not in res.stderr
    leftovers = list((tmp_path / "run" / "prepare").glob("*")) if (tmp_path / "run" / "prepare").exists() else []
    assert leftovers == []


def test_llm_stage_2_judges_chunk_prefixes_after_the_rules(corpus, tmp_path):
    """filter.llm_stage (METHOD §2.3): the proxy judge (lexicon safety) reads the prefix of each held-out
    chunk of a stage-1 unsafe document, 3 seeds here; unanimous -> unsafe, else rest; counts in the manifest."""
    from flows.prepare import prepare

    cfg = _cfg(tmp_path, corpus, "filter.llm_stage=true", "judge.model=none", "judge.safety_stage_seeds=3",
               "data.heldout_fraction=0.5")
    out = prepare(cfg)
    filtered = pl.read_parquet(f"{out['filtered'].uri}/*/*.parquet")
    flagged = set(filtered.filter(pl.col("label") == "unsafe")["doc_id"])
    assert {f"planted-unsafe-{j}" for j in range(3)} <= flagged
    assert out["filtered"].stats["labels"]["excluded"] >= 1  # stage 1's verdicts pass through unchanged
    chunks = pl.read_parquet(f"{out['chunks'].uri}/*/*.parquet")
    judged = chunks.filter(pl.col("filter_reason").str.starts_with("llm-"))
    expected = chunks.filter(pl.col("doc_id").is_in(list(flagged)) & (pl.col("split") == "heldout"))
    assert set(judged["chunk_id"]) == set(expected["chunk_id"]) and judged.height > 0
    for label, reason in zip(judged["filter_label"], judged["filter_reason"]):
        assert (label, reason == "llm-unanimous-3") in {("unsafe", True), ("rest", False)}
    stats = out["chunks"].stats["llm_stage"]
    assert stats["judged"] == judged.height == stats["unsafe"] + stats["rest"] and stats["votes"] == 3 * judged.height
    assert stats["unsafe"] == (judged["filter_label"] == "unsafe").sum()


_TEST_PROCESS = os.getpid()


def _die(table, stages):  # `label_documents` in a rule worker that dies (killed, out of memory)
    assert os.getpid() != _TEST_PROCESS, "must only run in a rule worker"
    os._exit(3)


def _multicore():
    import sip_core.data.prepare as library

    if not library._rule_workers():
        pytest.skip("one core or no fork: the rules run in this process")
    return library


def test_rule_workers_label_exactly_as_this_process(first_run, corpus, tmp_path, monkeypatch):
    """Shards of at least PARALLEL_RULES_MIN_DOCS documents go to forked rule workers, shared by the
    flow's shard threads; first_run's shards were below the bar and labelled in this process."""
    from flows.prepare import prepare

    library = _multicore()
    pools = []
    real = library.rule_pool
    monkeypatch.setattr(library, "PARALLEL_RULES_MIN_DOCS", 1)
    monkeypatch.setattr(library, "rule_pool", lambda: pools.append(real()) or pools[-1])
    _, expected = first_run
    out = prepare(_cfg(tmp_path, corpus))
    assert len(pools) == 4 and all(p is pools[0] for p in pools)  # one per shard, one pool for all
    assert out["filtered"].content_hash == expected["filtered"].content_hash
    assert out["filtered"].stats == expected["filtered"].stats
    assert rule_workers.current_pool() is None  # the workers stop when the stage commits


def test_a_dead_rule_worker_fails_the_stage_and_commits_nothing(corpus, tmp_path, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    from sip_core.infra import artifacts
    library = _multicore()
    env = RunContext(_cfg(tmp_path, corpus))
    docs = library.ingest_documents(env)
    uri, _ = library.filter_plan(env, docs.content_hash, library._filter_stages(env, None))
    monkeypatch.setattr(library, "PARALLEL_RULES_MIN_DOCS", 1)
    real = library.label_documents
    monkeypatch.setattr(library, "label_documents", _die)
    with pytest.raises(BrokenProcessPool):
        library.filter_documents(env, docs)
    assert rule_workers.current_pool() is None and artifacts.load_committed(uri) is None
    monkeypatch.setattr(library, "label_documents", real)  # the next try gets a new pool
    assert library.filter_documents(env, docs).stats["total"] == docs.rows


def test_a_list_of_sources_is_one_corpus_of_their_documents(tmp_path):
    """data.source as a list: the bundled C4 and RedPajama samples read as one corpus (the safety
    preset needs both: each has only a few documents stage 1 flags); a Hub id or an empty list
    in it is one line."""
    from sip_core.data.prepare import ingest_documents
    from sip_core.data.readers import SourceError, resolve_source

    both = load_config(None, [f"run.root={tmp_path}", "data.source=[bundled:c4, bundled:redpajama]"])
    files = resolve_source(both.data).files
    one = {name: resolve_source(load_config(None, [f"data.source=bundled:{name}"]).data).files
           for name in ("c4", "redpajama")}
    assert files == one["c4"] + one["redpajama"]
    docs = ingest_documents(RunContext(both))
    sources = {s for f in docs.files for s in pl.read_parquet(f)["source"].to_list()}
    assert {s.split("/")[-1] for s in sources} == {f.split("/")[-1] for f in files}
    for bad, why in (("[bundled:c4, someorg/somedataset]", "Hugging Face dataset"), ("[]", "empty list")):
        with pytest.raises(SourceError, match=why):
            resolve_source(load_config(None, [f"data.source={bad}"]).data)
