"""Training data: chunk rows from the prepare artifact, in a deterministic order, the texts of
the thought artifact's halves, and RLMT rows at the teacher's thought positions.

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

from sip_core.config import ConfigError
from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import Manifest
from sip_core.llm.thought_markup import strip_thoughts, thought_spans

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


# `pretrain.data`: which chunks a recipe trains on, by the filter label each chunk carries
# (sip_core.data.chunking: `filter_label`, the document's stage-1 label, or stage 2's on the chunk's
# prefix). "rest" is everything stage 1 did not flag (quality-excluded documents too, when chunked).
PARTITIONS: dict[str, tuple[str, ...] | None] = {"all": None, "unsafe": ("unsafe",), "rest": ("rest", "excluded")}


class PartitionTooSmall(ConfigError):
    """`pretrain.data` selects fewer train chunks than one optimizer step needs (bad input: exit 2)."""


def read_chunk_rows(chunks: Manifest, split: str, storage_options: dict, columns: list[str],
                    partition: str = "all") -> Rows:
    """Chunk rows of one split whose filter label is in `partition` (a `PARTITIONS` key)."""
    labels = PARTITIONS[partition]
    if labels is None:
        return read_rows(chunks, split, storage_options, columns)
    import pyarrow.compute as pc

    rows = read_rows(chunks, split, storage_options, sorted({*columns, "filter_label"}))
    table = pa.table(rows.columns) if len(rows) else None
    if table is None:
        return Rows({c: [] for c in columns})
    table = table.filter(pc.is_in(table["filter_label"], pa.array(labels, pa.string())))
    return Rows({c: table[c].to_pylist() for c in columns})


def label_counts(chunks: Manifest, split: str, storage_options: dict) -> dict[str, int]:
    """Chunks per filter label in one split."""
    labels = read_rows(chunks, split, storage_options, ["filter_label"]).columns.get("filter_label", [])
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def check_partition(chunks: Manifest, tc, storage_options: dict, key: str = "pretrain.data") -> int:
    """The number of train chunks `tc.data` selects; raises PartitionTooSmall (one line with the
    counts) when it is empty, or smaller than one optimizer step's global batch (batch_size x
    grad_accum x processes): a step would then repeat chunks, and a longer run only the same few."""
    partition = getattr(tc, "data", "all")
    counts = label_counts(chunks, "train", storage_options)
    labels = PARTITIONS[partition]
    n = sum(v for k, v in counts.items() if labels is None or k in labels)
    shown = ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
    need = tc.batch_size * tc.grad_accum * tc.nproc_per_node
    where = f"{key}={partition}: the chunk artifact's train split has {n} selected chunks (by label: {shown})"
    if n == 0:
        why = "stage 1 flagged nothing in this corpus" if partition == "unsafe" else "nothing to train on"
        raise PartitionTooSmall(f"{where}: {why}; use a corpus with flagged documents or another {key}")
    if n < need:
        raise PartitionTooSmall(f"{where}, fewer than one step's global batch of {need} (batch_size {tc.batch_size}"
                                f" x grad_accum {tc.grad_accum} x {tc.nproc_per_node} processes) for "
                                f"{tc.steps} steps; lower the batch or use a larger corpus")
    return n


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


def thought_rows(thoughts: Manifest, half: str | None, storage_options: dict) -> list[str]:
    """The texts (with `<think>` spans) of the thought artifact's gated rows in one half (sft / rl;
    None: both)."""
    return gated_thoughts(thoughts, half, storage_options).columns["augmented_text"]


def gated_thoughts(thoughts: Manifest, half: str | None, storage_options: dict,
                   chunk_ids: set[str] | None = None) -> Rows:
    """(chunk_id, augmented_text) of the gated rows in one half (None: both), optionally only
    those whose chunk is in `chunk_ids`."""
    rows = read_rows(thoughts, None, storage_options, THOUGHT_COLUMNS)
    keep = [i for i, (c, h, s) in enumerate(zip(*(rows.columns.get(k, []) for k in ("chunk_id", "half", "status"))))
            if s == "ok" and (half is None or h == half) and (chunk_ids is None or c in chunk_ids)]
    return Rows({k: [rows.columns.get(k, [])[i] for i in keep] for k in ("chunk_id", "augmented_text")})


def chunk_ids(chunks: Manifest, partition: str, storage_options: dict) -> set[str]:
    return set(read_rows(chunks, partition, storage_options, ["chunk_id"]).columns.get("chunk_id", []))


class NoThoughtData(ValueError):
    """A recipe's share of the thought data is empty (a one-line error, never a fallback)."""


def thought_prompts(augmented: Rows, tokenizer, min_before: int, n_after: int) -> Rows:
    """RLMT rows from teacher thought positions (METHOD §2.6, §5.6 [repl]): per augmented text,
    the first teacher thought with at least `min_before` tokens of augmented text before it and
    `n_after` raw tokens after it. prefix_ids: the augmented text before that thought (earlier
    teacher thoughts kept); prefix_text: the same without thoughts (what the judge reads);
    suffix_ids / suffix_text: the next `n_after` raw tokens (thought spans stripped). The teacher's
    thought text itself is never used. Texts without such a position are left out."""
    cols: dict[str, list] = {c: [] for c in CHUNK_COLUMNS}
    for chunk_id, text in zip(augmented.columns["chunk_id"], augmented.columns["augmented_text"]):
        for start, _ in thought_spans(text):
            before = text[:start].rstrip()
            prefix_ids = tokenizer(before, add_special_tokens=False)["input_ids"]
            suffix_ids = tokenizer(strip_thoughts(text[start:]), add_special_tokens=False)["input_ids"][:n_after]
            if len(prefix_ids) >= min_before and len(suffix_ids) >= n_after:
                values = (chunk_id, prefix_ids, suffix_ids, strip_thoughts(before), tokenizer.decode(suffix_ids))
                for name, value in zip(CHUNK_COLUMNS, values):
                    cols[name].append(value)
                break
    return Rows(cols)
