"""Data-stage tasks. Each passes artifact references (URI + content hash), never data frames."""

from __future__ import annotations

import hashlib
import json

from prefect import task
from prefect.runtime import flow_run, task_run

from sip_core import artifacts
from sip_core.artifacts import Manifest, Provenance
from sip_core.config import SipConfig
from sip_core.prepare import INGEST_KEYS, StageEnv, filter_documents, ingest_documents, materialize_chunks


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
    from sip_core import store
    from sip_core.sources import resolve_source

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


def _stage_inputs(task_name: str, cfg: SipConfig, params: dict) -> list:
    """What a stage's output depends on: its own config sections (not the whole config, so
    changing the filter does not re-run ingest), its parent's content hash, and the code."""
    data = cfg.data.model_dump(mode="json")
    if task_name == "ingest-documents":
        section = [{k: data[k] for k in INGEST_KEYS}, _source_fingerprint(cfg)]
    elif task_name == "filter-documents":
        judge = cfg.judge.model_dump(mode="json", exclude={"api_key_block"}) if cfg.filter.llm_stage else None
        section = [cfg.filter.model_dump(mode="json"), judge]
    else:
        section = [{k: v for k, v in data.items() if k not in INGEST_KEYS}, cfg.model.policy,
                   cfg.filter.chunk_excluded]
    parent = next((v["content_hash"] for v in params.values() if isinstance(v, dict) and "content_hash" in v), None)
    return [task_name, cfg.run.root, cfg.run.storage_options, section, parent, params.get("code_version")]


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


def _env(cfg: SipConfig) -> StageEnv:
    return StageEnv(cfg, Provenance(flow_run_id=str(flow_run.id) if flow_run.id else None,
                                    task_run_id=str(task_run.id) if task_run.id else None))


def _load(parent: dict, cfg: SipConfig) -> Manifest:
    return artifacts.load_manifest(parent["uri"], cfg.run.storage_options)


@task(name="ingest-documents", **OPTIONS)
def ingest_task(cfg: SipConfig, code_version: str) -> dict:
    return ref(ingest_documents(_env(cfg)))


@task(name="filter-documents", **OPTIONS)
def filter_task(cfg: SipConfig, docs: dict, code_version: str) -> dict:
    env = _env(cfg)
    stages = None
    if cfg.filter.llm_stage:  # stage 2 plugs in after the rules, stage 1 unchanged
        from sip_core.llm.factory import open_llm
        from sip_core.prepare import build_rule_stage
        from sip_core.safety_stage import LLMSafetyStage

        judge = open_llm(cfg, "judge", env.provenance)
        stages = [build_rule_stage(env), LLMSafetyStage(judge, cfg.judge.safety_stage_seeds, cfg.judge.parse_retries,
                                                        prefill=cfg.judge.prefill)]
    return ref(filter_documents(env, _load(docs, cfg), stages))


@task(name="materialize-chunks", **OPTIONS)
def chunk_task(cfg: SipConfig, filtered: dict, code_version: str) -> dict:
    return ref(materialize_chunks(_env(cfg), _load(filtered, cfg)))
