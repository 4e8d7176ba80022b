"""What the recipe tests share: tiny CPU settings, one chunk artifact built once, the recipe
command line, and reading a run's metrics.

Everything runs on the CPU in fp32 on tiny settings (60 documents, 32-token prefixes, 16-token
suffixes); each test has its own run root, and they share one chunk artifact.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "tiny.yaml")

DATA = ["data.max_docs=60", "data.prefix_tokens=64", "data.suffix_tokens=16", "data.min_prefix_tokens=16"]
TRAIN = ["device=cpu", "precision=fp32", "heldout_rows=2", "max_prefix_tokens=32"]


def overrides(root, *extra: str) -> list[str]:
    sections = [f"{s}.{kv}" for s in ("pretrain", "sft", "rlmt", "rewriter_train") for kv in TRAIN if not (
        s == "sft" and kv.startswith("max_prefix"))]
    return [f"run.root={root}", *DATA, "judge.model=none", "teacher.model=none", "pretrain.k_rollouts=1",
            "pretrain.batch_size=2", "pretrain.checkpoint_every=100", "pretrain.eval_every=100", *sections, *extra]


def tiny_cfg(root, *extra: str):
    from sip_core.config import load_config

    return load_config(CONFIG, overrides(root, *extra))


def cli_args(root, chunks_uri: str, *extra: str) -> list[str]:
    args = ["--config", CONFIG, "--chunks", chunks_uri]
    for kv in overrides(root, *extra):
        args += ["--set", kv]
    return args


def env_vars() -> dict:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


def read_metrics(final_manifest) -> list[dict]:
    return pq.read_table(final_manifest.stats["metrics_uri"]).to_pylist()


def prepare_chunks(cfg):
    """The data stage's chunk artifact for cfg (recipes take it as an input, never make it)."""
    from sip_core.data.prepare import filter_documents, ingest_documents, materialize_chunks
    from sip_core.infra.run_context import RunContext

    env = RunContext(cfg)
    return materialize_chunks(env, filter_documents(env, ingest_documents(env)))


def save_tiny_llama(folder) -> str:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template: a recipe's full path in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sip_core.infra.models import load_tokenizer

    tok = load_tokenizer("bundled:smollm2-135m-instruct")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=2048, tie_word_embeddings=True,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


_SHARED: dict = {}


@pytest.fixture(scope="session")
def chunks(tmp_path_factory):
    """One small chunk artifact (bundled C4), shared by every test module that trains."""
    if "chunks" not in _SHARED:
        manifest = prepare_chunks(tiny_cfg(tmp_path_factory.mktemp("chunks")))
        assert manifest.stats.get("partitions", {}) or manifest.files
        _SHARED["chunks"] = manifest
    return _SHARED["chunks"]
