"""Checkpoints in the artifact store: an HF model folder + `trainer_state.pt` (optimizer,
scheduler, RNG states, step, metrics so far), committed by a manifest written last.

Layout: `<run_dir>/step-000010/` ... and `<run_dir>/final/` (the finished model). A folder
without `_manifest.json` is an interrupted save: never loaded, overwritten on the next save.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import MANIFEST, Manifest, WriteContext


def step_dir(run_dir: str, step: int) -> str:
    return store.join(run_dir, f"step-{step:06d}")


def _model_digest(local: Path) -> str:
    """Content hash of the model files (the trainer state is excluded: it does not define the model)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in local.rglob("*") if p.is_file() and p.name != "trainer_state.pt"):
        file_hash = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 24):
                file_hash.update(block)
        digest.update(path.name.encode())
        digest.update(file_hash.digest())
    return digest.hexdigest()


def _publish(local: Path, uri: str, storage_options: dict) -> list[str]:
    """Move the staged folder's files to `uri`: a local store renames the folder into place (no
    copy of a gigabyte of optimizer state); an object store gets each file uploaded."""
    names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    if store.is_remote(uri):
        for name in names:
            store.write_bytes(store.join(uri, name), (local / name).read_bytes(), storage_options)
    else:
        store.remove_tree(uri, storage_options)  # an interrupted save's leftovers (no manifest)
        os.replace(local, store.filesystem(uri, storage_options)[1])
    return [store.join(uri, name) for name in names]


def save(uri: str, model, tokenizer, state: dict[str, Any] | None, ctx: WriteContext,
         stats: dict[str, Any] | None = None) -> Manifest:
    """Write model (+ trainer state) under `uri` and commit it with a manifest (lineage:
    ctx.parents). Files go through fsspec, so `s3://` roots work unchanged; on a local store they
    are written beside the target (same filesystem) and renamed into place."""
    so = ctx.storage_options
    if store.exists(store.join(uri, MANIFEST), so):
        store.remove_tree(uri, so)  # a re-save of the same step replaces it whole
    staging_parent = None
    if not store.is_remote(uri):
        staging_parent = Path(store.filesystem(uri, so)[1]).parent
        staging_parent.mkdir(parents=True, exist_ok=True)
        for stale in staging_parent.glob(".sip-ckpt-*"):  # a killed save's staging (one saver per run)
            shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=".sip-ckpt-", dir=staging_parent) as tmp:
        local = Path(tmp) / "checkpoint"
        getattr(model, "module", model).save_pretrained(local)
        tokenizer.save_pretrained(local)
        if state is not None:
            torch.save(state, local / "trainer_state.pt")
        content = _model_digest(local)
        files = _publish(local, uri, so)
    return artifacts.commit(uri, ctx, "checkpoint", content, files, stats=stats)


def committed_steps(run_dir: str, storage_options: dict) -> list[int]:
    fs, path = store.filesystem(run_dir, storage_options)
    if not fs.exists(path):
        return []
    steps = []
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("step-") and store.exists(store.join(run_dir, name, MANIFEST), storage_options):
            steps.append(int(name.split("-", 1)[1]))
    return sorted(steps)


def prune(run_dir: str, keep: int, storage_options: dict) -> None:
    """Delete all but the newest `keep` step checkpoints (0: all of them)."""
    steps = committed_steps(run_dir, storage_options)
    for step in steps[:len(steps) - keep]:
        store.remove_tree(step_dir(run_dir, step), storage_options)


def load_state(uri: str, storage_options: dict) -> dict[str, Any]:
    data = store.read_bytes(store.join(uri, "trainer_state.pt"), storage_options)
    return torch.load(io.BytesIO(data), weights_only=False)  # our own file: optimizer + RNG objects


def local_copy(uri: str, storage_options: dict) -> str:
    """A local folder `from_pretrained` can read: the folder itself, or a cached download."""
    if not store.is_remote(uri):
        return str(Path(store.normalize(uri)))
    manifest = artifacts.load_manifest(uri, storage_options)
    target = Path(tempfile.gettempdir()) / "sip-ckpt-cache" / manifest.content_hash
    if not (target / "config.json").is_file():
        tmp = target.with_name(target.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        prefix = store.normalize(uri).rstrip("/") + "/"
        for f in manifest.files:
            dest = tmp / f[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(store.read_bytes(f, storage_options))
        tmp.rename(target)
    return str(target)
