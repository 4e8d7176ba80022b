"""`sip lineage`: find an artifact's ancestry (lineage DB first, manifests on the store as fallback)."""

from __future__ import annotations

import json

from sip_core.infra import artifacts, store
from sip_core.config import SipConfig
from sip_core.infra.run_context import RunContext


def _dataset_of(shard_uri: str, storage_options: dict) -> str:
    """The dataset a shard belongs to: `<dataset>/part-*.parquet` (unpartitioned) or
    `<dataset>/<partition>/part-*.parquet`, i.e. the nearest folder above it with a commit marker."""
    parent = shard_uri.rsplit("/", 1)[0]
    grandparent = parent.rsplit("/", 1)[0]
    for candidate in (parent, grandparent):
        if store.exists(store.join(candidate, artifacts.MANIFEST), storage_options):
            return candidate
    return grandparent


def _from_manifests(uri: str, storage_options: dict) -> list[dict]:
    """Walk parent URIs through manifest files: works where the lineage DB is not at hand."""
    out, seen, frontier = [], set(), [(uri, 0)]
    while frontier:
        current, depth = frontier.pop(0)
        if current in seen:
            continue
        seen.add(current)
        try:
            m = artifacts.load_manifest(current, storage_options)
        except FileNotFoundError:
            out.append({"depth": depth, "kind": "source", "uri": current, "n_rows": None, "manifest": {}})
            continue
        out.append({"depth": depth, "kind": m.kind, "uri": m.uri, "n_rows": m.rows, "config_hash": m.config_hash,
                    "code_version": m.code_version, "flow_run_id": m.flow_run_id, "manifest": m.model_dump()})
        if m.kind == "parquet-shard":
            frontier.append((_dataset_of(current, storage_options), depth + 1))
        frontier.extend((p, depth + 1) for p in m.parent_uris)
    return out


def ancestry(uri: str, cfg: SipConfig) -> list[dict]:
    uri = store.normalize(uri)
    rows = RunContext(cfg).lineage().ancestry(uri)
    return rows or _from_manifests(uri, cfg.run.storage_options)


def _flatten(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for key, value in sorted(tree.items()):
        if isinstance(value, dict) and value:
            out.extend(_flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def format_ancestry(rows: list[dict], verbose: bool = False) -> str:
    if not rows:
        raise FileNotFoundError("no lineage found for that URI (is it a committed sip artifact?)")
    lines = []
    for row in rows:
        m = row["manifest"]
        pad = "  " * row["depth"]
        head = f"{pad}{row['kind']}: {row['uri']}"
        if row.get("n_rows") is not None:
            head += f"  rows={row['n_rows']}"
        lines.append(head)
        if row["kind"] == "source":
            for f in m.get("files", [])[1:]:
                lines.append(f"{pad}  + {f}")
            lines.append(f"{pad}  sha256={m.get('content_hash', '?')[:16]}")
            continue
        run = f" flow_run={row['flow_run_id']}" if row.get("flow_run_id") else ""
        lines.append(f"{pad}  config_hash={row.get('config_hash')} code={row.get('code_version')}{run}")
        if row["kind"] != "parquet-shard":
            flat = " ".join(f"{k}={json.dumps(v)}" for k, v in _flatten(m.get("config", {})))
            lines.append(f"{pad}  config: {flat if verbose or len(flat) < 600 else flat[:597] + '...'}")
    return "\n".join(lines)
