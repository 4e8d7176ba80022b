"""Write a rendered report under a URI (local or s3://) with a manifest and lineage."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sip_core.infra import store
from sip_core.infra.artifacts import MANIFEST, Manifest, WriteContext, artifact_id, code_version
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
        digest = hashlib.sha256(json.dumps(results.config, sort_keys=True, default=str).encode()).hexdigest()
        ctx = WriteContext(config=results.config, config_hash=digest[:16], parents=[])
    options = storage_options if storage_options is not None else ctx.storage_options
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
    manifest = Manifest(artifact_id=artifact_id(uri, digest), uri=uri, kind="report", content_hash=digest,
                        config_hash=ctx.config_hash, config=ctx.config, code_version=code_version(),
                        flow_run_id=ctx.provenance.flow_run_id, task_run_id=ctx.provenance.task_run_id,
                        parents=[p.artifact_id for p in ctx.parents], parent_uris=[p.uri for p in ctx.parents],
                        files=[store.join(uri, name) for name in sorted(payload)], stats=stats)
    if ctx.lineage is not None:
        ctx.lineage.record([manifest])
    store.write_json(store.join(uri, MANIFEST), manifest.model_dump(), options)
    return manifest
