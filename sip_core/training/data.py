"""Training data: chunk rows from the prepare artifact, in a deterministic order, and the texts of
the thought artifact's halves.

The order is a function of (seed, epoch) only, and step s reads global positions
[s*B, (s+1)*B) of it, so a resumed run continues exactly where the killed one stopped, and each
torchrun rank takes its own slice of every step's global batch.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import Manifest

CHUNK_COLUMNS = ["chunk_id", "prefix_ids", "suffix_ids", "prefix_text", "suffix_text"]
THOUGHT_COLUMNS = ["chunk_id", "half", "augmented_text", "status"]


@dataclass
class Rows:
    """Columns as Python lists (a few thousand rows at most per run on one machine)."""

    columns: dict[str, list]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def take(self, indices) -> list[dict]:
        return [{k: v[i] for k, v in self.columns.items()} for i in indices]


def read_rows(manifest: Manifest, partition: str | None, storage_options: dict,
              columns: list[str] | None = None, where: tuple[str, str] | None = None) -> Rows:
    tables = [store.read_parquet(f, storage_options, columns=columns)
              for f in artifacts.shard_uris(manifest, partition)]
    table = pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns or []})
    if where is not None:
        import pyarrow.compute as pc

        table = table.filter(pc.equal(table[where[0]], where[1]))
    return Rows(table.to_pydict())


@functools.lru_cache(maxsize=4)
def order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    digest = hashlib.sha256(f"order:{seed}:{epoch}".encode()).hexdigest()
    return np.random.default_rng(int(digest[:16], 16)).permutation(n_rows)


def step_indices(n_rows: int, step: int, global_batch: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Row indices this rank reads at optimizer step `step` (0-based); epochs reshuffle."""
    if n_rows == 0:
        raise ValueError("no training rows: the chunk artifact's train split is empty")
    positions = range(step * global_batch, (step + 1) * global_batch)
    out = []
    for pos in positions:
        epoch, offset = divmod(pos, n_rows)
        out.append(int(order(n_rows, seed, epoch)[offset]))
    per_rank = global_batch // world
    return out[rank * per_rank:(rank + 1) * per_rank]


def cap_suffixes(rows: Rows, n_tokens: int, tokenizer) -> Rows:
    """Keep the first n_tokens of every suffix (text re-decoded from the kept ids)."""
    ids = rows.columns.get("suffix_ids", [])
    if all(len(s) <= n_tokens for s in ids):
        return rows
    capped = [list(s[:n_tokens]) for s in ids]
    return Rows({**rows.columns, "suffix_ids": capped, "suffix_text": tokenizer.batch_decode(capped)})


def truncate_prefix(ids: list[int], max_tokens: int | None) -> list[int]:
    return list(ids[-max_tokens:]) if max_tokens else list(ids)


def thought_rows(thoughts: Manifest, half: str, storage_options: dict) -> list[str]:
    """The texts (with `<think>` spans) of the thought artifact's gated rows in one half (sft / rl)."""
    rows = read_rows(thoughts, None, storage_options, THOUGHT_COLUMNS)
    return [t for t, h, s in zip(rows.columns.get("augmented_text", []), rows.columns.get("half", []),
                                 rows.columns.get("status", [])) if s == "ok" and h == half]


def rl_chunk_ids(thoughts: Manifest | None, storage_options: dict) -> set[str] | None:
    """The RL half of the thought data (method: data flow B); None = every train chunk."""
    if thoughts is None:
        return None
    rows = read_rows(thoughts, None, storage_options, ["chunk_id", "half"])
    return {c for c, h in zip(rows.columns["chunk_id"], rows.columns["half"]) if h == "rl"}
