"""`sip lineage`: find an artifact's ancestry (lineage DB first, manifests on the store as fallback)."""

from __future__ import annotations

import json

from sip_core import artifacts, store
from sip_core.config import SipConfig
from sip_core.lineage import LineageDB
from sip_core.paths import state_dir_for


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
            frontier.append((current.rsplit("/", 2)[0] if "/" in current else current, depth + 1))
        frontier.extend((p, depth + 1) for p in m.parent_uris)
    return out


def ancestry(uri: str, cfg: SipConfig) -> list[dict]:
    uri = store.normalize(uri)
    rows = LineageDB(state_dir_for(cfg.run.root, cfg.run.state_dir) / "lineage.duckdb").ancestry(uri)
    return rows or _from_manifests(uri, cfg.run.storage_options)


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
            config = json.dumps(m.get("config", {}), sort_keys=True)
            lines.append(f"{pad}  config={config if verbose or len(config) < 160 else config[:157] + '...'}")
    return "\n".join(lines)
