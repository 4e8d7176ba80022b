"""Data-stage tasks. Each passes artifact references (URI + content hash), never data frames.

Filter and chunk come in two kinds: a per-shard task (`filter-shard`, `chunk-shard`, mapped over the
input dataset's shards; it writes its own parts and returns their URIs and hashes) and the stage
task (`filter-documents`, `materialize-chunks`) that commits those parts as one dataset."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading

from prefect import task
from prefect.runtime import flow_run, task_run

from sip_core.infra import artifacts
from sip_core.infra.artifacts import Manifest, Provenance
from sip_core.config import SipConfig
from sip_core.infra.run_context import RunContext
from sip_core.data.prepare import (INGEST_KEYS, chunk_shard, filter_documents, filter_shard, ingest_documents,
                              materialize_chunks)


def transient(task, task_run, state) -> bool:
    """Retry I/O hiccups (an object store, a network filesystem); bad input fails at once."""
    try:
        state.result()
    except FileNotFoundError:
        return False
    except (OSError, TimeoutError):
        return True
    except Exception:
        return False
    return False


def _source_fingerprint(cfg: SipConfig) -> list:
    """Names, sizes and mtimes of the source files: an edited corpus is not a cache hit."""
    from sip_core.infra import store
    from sip_core.data.readers import resolve_source

    src = resolve_source(cfg.data, cfg.run.storage_options)
    out = []
    for uri in src.uris():
        if uri.startswith("hf://"):
            out.append(uri)
            continue
        fs, path = store.filesystem(uri, cfg.run.storage_options)
        info = fs.info(path)
        out.append([uri, info.get("size"), str(info.get("mtime") or info.get("LastModified") or "")])
    return out


STAGE_OF = {"filter-shard": "filter-documents", "chunk-shard": "materialize-chunks"}


def _stage_inputs(task_name: str, cfg: SipConfig, params: dict) -> list:
    """What a stage's output depends on: its own config sections (not the whole config, so
    changing the filter does not re-run ingest), its parent's content hash, and the code."""
    data = cfg.data.model_dump(mode="json")
    stage = STAGE_OF.get(task_name, task_name)
    if stage == "ingest-documents":
        section = [{k: data[k] for k in INGEST_KEYS}, _source_fingerprint(cfg)]
    elif stage == "filter-documents":
        judge = cfg.judge.model_dump(mode="json", exclude={"api_key_block"}) if cfg.filter.llm_stage else None
        section = [cfg.filter.model_dump(mode="json"), judge]
    else:
        section = [{k: v for k, v in data.items() if k not in INGEST_KEYS}, cfg.model.policy,
                   cfg.filter.chunk_excluded]
    parent = next((v["content_hash"] for v in params.values() if isinstance(v, dict) and "content_hash" in v), None)
    shard = [params["index"], params["shard_uri"]] if "shard_uri" in params else None  # a per-shard task
    return [task_name, cfg.run.root, cfg.run.storage_options, section, parent, shard, params.get("code_version")]


def stage_cache_key(context, params: dict) -> str:
    name = context.task.name
    payload = json.dumps(_stage_inputs(name, params["cfg"], params), sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(payload.encode()).hexdigest()[:32]}"


# The code version is a task input, so new code never reuses an old cached result.
OPTIONS = dict(cache_key_fn=stage_cache_key, persist_result=True, retries=2, retry_delay_seconds=[2, 10],
               retry_condition_fn=transient)


def ref(m: Manifest) -> dict:
    return {"uri": m.uri, "content_hash": m.content_hash, "artifact_id": m.artifact_id, "rows": m.rows,
            "stats": m.stats}


def _env(cfg: SipConfig) -> RunContext:
    return RunContext(cfg, Provenance(flow_run_id=str(flow_run.id) if flow_run.id else None,
                                    task_run_id=str(task_run.id) if task_run.id else None))


def _load(parent: dict, cfg: SipConfig) -> Manifest:
    return artifacts.load_manifest(parent["uri"], cfg.run.storage_options)


@task(name="ingest-documents", **OPTIONS)
def ingest_task(cfg: SipConfig, code_version: str) -> dict:
    return ref(ingest_documents(_env(cfg)))


def _filter_stages(cfg: SipConfig, env: RunContext) -> list | None:
    """None (the rule stage alone), or the rules then the LLM safety stage 2, stage 1 unchanged."""
    if not cfg.filter.llm_stage:
        return None
    from sip_core.llm.factory import open_llm
    from sip_core.data.prepare import build_rule_stage
    from sip_core.data.llm_safety_filter import LLMSafetyStage

    judge = open_llm(cfg, "judge", env.provenance)
    return [build_rule_stage(env), LLMSafetyStage(judge, cfg.judge.safety_stage_seeds, cfg.judge.parse_retries,
                                                  prefill=cfg.judge.prefill)]


# Shards on threads of one process take turns with the LLM stage: one judgment-cache writer at a time.
_LLM_STAGE = threading.Lock()


def create_judgment_cache(cfg: SipConfig) -> None:
    """Create the judgment cache's tables before shards open it at once (DuckDB refuses two
    concurrent CREATEs of one table)."""
    if cfg.filter.llm_stage:
        from sip_core.llm.cache import JudgmentCache
        from sip_core.infra.run_context import state_dir_for

        JudgmentCache(state_dir_for(cfg.run.root, cfg.run.state_dir) / "judgments.duckdb")


@task(name="filter-shard", **OPTIONS)
def filter_shard_task(cfg: SipConfig, docs: dict, index: int, shard_uri: str, code_version: str,
                      parallel: bool = True) -> dict:
    """One docs shard -> its parts of the filtered dataset: {"index", "parts" (URIs, hashes, rows), "stats"}."""
    return _filter_shard(cfg, docs, index, shard_uri, parallel)


def _filter_shard(cfg: SipConfig, docs: dict, index: int, shard_uri: str, parallel: bool) -> dict:
    # A plain function: a task's own function travels to Ray by value, with the globals it uses (no locks).
    env = _env(cfg)
    with _LLM_STAGE if cfg.filter.llm_stage else contextlib.nullcontext():
        return filter_shard(env, docs["content_hash"], index, shard_uri, _filter_stages(cfg, env), parallel)


@task(name="filter-documents", **OPTIONS)
def filter_task(cfg: SipConfig, docs: dict, code_version: str, shards: list[dict] | None = None) -> dict:
    """Commit the filter-shard results (any shard missing is filtered here; none given: all of them)."""
    env = _env(cfg)
    return ref(filter_documents(env, _load(docs, cfg), _filter_stages(cfg, env), shards))


@task(name="chunk-shard", **OPTIONS)
def chunk_shard_task(cfg: SipConfig, filtered: dict, index: int, shard_uri: str, code_version: str) -> dict:
    """One filtered shard -> its parts of the chunk dataset: {"index", "parts" (URIs, hashes, rows), "stats"}."""
    return chunk_shard(_env(cfg), filtered["content_hash"], index, shard_uri)


@task(name="materialize-chunks", **OPTIONS)
def chunk_task(cfg: SipConfig, filtered: dict, code_version: str, shards: list[dict] | None = None) -> dict:
    """Commit the chunk-shard results (any shard missing is chunked here; none given: all of them)."""
    return ref(materialize_chunks(_env(cfg), _load(filtered, cfg), shards))
