"""Write a rendered report under a URI (local or s3://) with a manifest and lineage."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import Manifest, WriteContext
from sip_core.report.models import RunResults
from sip_core.report.judge import JudgeView
from sip_core.report.render import render_report


def _results_json(results: RunResults) -> bytes:
    # allow_nan=False: results.json is strict JSON (the models turn NaN metrics into null)
    return json.dumps(results.model_dump(mode="json"), indent=2, default=str,  # key order is display order
                      allow_nan=False).encode()


def save_report(results: RunResults | dict, uri: str, storage_options: dict[str, Any] | None = None,
                ctx: WriteContext | None = None) -> Manifest:
    """Write report.md, report.html, the PNGs and results.json under `uri` through sip_core.infra.store,
    then `_manifest.json` last (the commit marker), with the lineage of `write_json_artifact`:
    parents = `ctx.parents` (the compared checkpoints' manifests), recorded in `ctx.lineage` when
    set. A leftover at `uri` is cleared first, so no stale plot outlives a re-render."""
    if not isinstance(results, RunResults):
        results = RunResults.model_validate(results)
    if ctx is None:
        ctx = WriteContext(config=results.config, config_hash=artifacts.config_hash(results.config), parents=[])
    if storage_options is not None:  # the files and the commit go where the caller says
        ctx = replace(ctx, storage_options=storage_options)
    options = ctx.storage_options
    uri = store.normalize(uri)
    files = render_report(results)
    payload: dict[str, bytes] = {"report.md": files.markdown.encode(), "report.html": files.html.encode(),
                                 "results.json": _results_json(results), **files.images}
    store.remove_tree(uri, options)
    hashes = []
    for name in sorted(payload):
        store.write_bytes(store.join(uri, name), payload[name], options)
        hashes.append(f"{name}:{hashlib.sha256(payload[name]).hexdigest()}")
    digest = hashlib.sha256("\n".join(hashes).encode()).hexdigest()
    view = JudgeView(results.judge_audit)
    stats = {"run_name": results.run_name, "arms": [a.name for a in results.arms],
             "comparisons": len(results.comparisons), "plots": sorted(files.images),
             "judge": view.judge, "judge_audit_passed": view.passed,
             "evaluations": {a.name: sorted(k for k, v in a.evaluations.items() if v is not None)
                             for a in results.arms}}
    written = [store.join(uri, name) for name in sorted(payload)]
    return artifacts.commit(uri, ctx, "report", digest, written, stats=stats)
