"""Assemble a run's report from what its stages returned, and save it content-addressed.

    results = run_results(ctx, preset, arms, evaluations, comparisons, audit)   # RunResults
    ref = save_run_report(ctx, results, parent_uris)                         # ReportRef

Stage metrics are read from the training session's metrics.parquet (pyarrow reads it, polars
shapes the rows); an arm's stages are (recipe, checkpoint reference) pairs in training order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl
from pydantic import BaseModel

from sip_core.evaluation.stats import audit_dict
from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import ArtifactRef
from sip_core.infra.run_context import RunContext
from sip_core.report.models import RunResults, Stage
from sip_core.report.save import save_report

if TYPE_CHECKING:  # the evaluation store loads models (torch): the report reads only its results
    from sip_core.evaluation.store import ModelEvaluation, PairComparison

COMPARED = ("winrate", "coherence", "winrate_unsafe")  # the pairwise results a comparison can hold, in report order


class ReportRef(BaseModel):
    """A saved report: its folder and the two documents in it."""

    uri: str
    html: str
    markdown: str

    def read_markdown(self, storage_options: dict[str, Any] | None = None) -> str:
        return store.read_bytes(self.markdown, storage_options).decode()

    def read_results(self, storage_options: dict[str, Any] | None = None) -> RunResults:
        return RunResults.model_validate_json(store.read_bytes(store.join(self.uri, "results.json"),
                                                               storage_options))

    def first_screen_markdown(self, storage_options: dict[str, Any] | None = None) -> str:
        """The report's first screen (identity, Judges box, headline table, decided comparisons):
        what the lifecycle's Prefect artifact shows."""
        from sip_core.report.first_screen import first_screen_markdown

        return first_screen_markdown(self.read_results(storage_options))


def metrics_frame(result: ArtifactRef, storage_options: dict[str, Any] | None = None) -> pl.DataFrame | None:
    """A training stage's per-step metrics (the `metrics_uri` its checkpoint names), or None."""
    uri = result.stats.get("metrics_uri")
    if not uri or not store.exists(uri, storage_options):
        return None
    return pl.from_arrow(store.read_parquet(uri, storage_options))


def metrics_rows(result: ArtifactRef, storage_options: dict[str, Any] | None = None,
                 digits: int | None = None) -> list[dict[str, Any]] | None:
    """The per-step rows (None: no metrics logged); with `digits`, floats rounded and empty cells
    left out (a table to show)."""
    frame = metrics_frame(result, storage_options)
    if frame is None:
        return None
    rows = frame.to_dicts()
    if digits is None:
        return rows
    return [{k: (round(v, digits) if isinstance(v, float) else v) for k, v in r.items() if v is not None}
            for r in rows]


def stage_view(ctx: RunContext, recipe: str, result: ArtifactRef) -> Stage:
    """A training stage as the report shows it: checkpoint, per-step metrics, ancestry."""
    lineage = [{k: r[k] for k in ("uri", "kind", "depth") if k in r} for r in ctx.lineage().ancestry(result.uri)]
    return Stage(recipe=recipe, checkpoint=result.uri, metrics=metrics_rows(result, ctx.storage_options) or [],
                 lineage=lineage,
                 summary={k: v for k, v in result.stats.items() if not isinstance(v, (dict, list))})


def run_summary(ctx: RunContext, preset: str | None) -> dict[str, Any]:
    cfg = ctx.cfg
    thinking = cfg.lifecycle.setting == "thinking"  # the safety setting trains no SFT or RLMT stage
    return {"preset": preset, "policy": cfg.model.policy, "judge": cfg.judge.backend, "data": cfg.data.source,
            "pretrain_steps": cfg.pretrain.steps, "sft_steps": cfg.sft.steps if thinking else None,
            "rlmt_steps": cfg.rlmt.steps if thinking else None, "k_rollouts": cfg.pretrain.k_rollouts,
            "setting": cfg.lifecycle.setting, "pretrain_data": cfg.pretrain.data}


def judge_note(ctx: RunContext) -> str:
    judge = ctx.cfg.judge
    if judge.backend == "proxy":
        return (f"judge backend: {judge.backend} ({judge.model}); a proxy judge is a stand-in, "
                "not evidence about the method")
    return f"judge: {judge.model}"


def unsafe_prefix_notes(ctx: RunContext, evaluations: dict[str, ModelEvaluation]) -> list[str]:
    """Why a safety run's unsafe-prefix rows are missing, when they are."""
    if ctx.cfg.lifecycle.setting != "safety" or any(e.unsafe_continuations for e in evaluations.values()):
        return []
    return [f"no held-out chunk is labelled unsafe (stage 1 at filter.min_badwords {ctx.cfg.filter.min_badwords}), "
            "so the win rate and safety rate on unsafe prefixes (Table 1's unsafe column) are not measured; a "
            "corpus where stage 1 flags more documents has them"]


def judge_roles(cfg) -> dict[str, Any] | None:
    """Which judge trained and which graded, and whether that is circular (None: this checkout's
    judge library cannot say)."""
    try:
        from sip_core.judge.independence import judge_roles as roles
    except ImportError:
        return None
    return roles(cfg)


def judges_view(cfg, judges: dict[str, Any] | None) -> dict[str, Any] | None:
    """`RunResults.judges`: the roles (`judge_roles`) with each judge's audit and their agreement,
    from what the lifecycle measured ({"roles", "audits": {"training", "evaluation"},
    "judge_agreement"}); the roles alone when it measured nothing."""
    judges = judges or {}
    roles = judges.get("roles") or judge_roles(cfg)
    if roles is None:
        return None
    out = dict(roles)
    if judges.get("audits"):
        out["audits"] = {role: audit_dict(a) for role, a in judges["audits"].items()}
    if judges.get("judge_agreement") is not None:
        agreement = judges["judge_agreement"]
        out["agreement"] = agreement if isinstance(agreement, dict) else agreement.model_dump(mode="json")
    return out


def run_results(ctx: RunContext, preset: str | None, arms: dict[str, list[tuple[str, ArtifactRef]]],
                evaluations: dict[str, ModelEvaluation], comparisons: list[tuple[str, str, PairComparison]],
                audit: dict[str, Any] | None, judges: dict[str, Any] | None = None) -> RunResults:
    """The report of a run: one arm per name in `arms` (its stages, its evaluations), every
    pairwise result of `comparisons` (A, B, their comparison), the (training) judge audit, the
    judges (`judges_view`) and notes."""
    ec = ctx.cfg.eval
    greedy = f"greedy {ec.continuation_tokens} tokens"
    label = {"winrate_unsafe": f"held-out unsafe prefixes (up to {ec.prefixes}), {greedy}"}
    return RunResults.model_validate({
        "run_name": ctx.cfg.run.name,
        "config": run_summary(ctx, preset),
        "arms": [{"name": name, "stages": [stage_view(ctx, recipe, r) for recipe, r in stages],
                  "evaluations": evaluations[name].results} for name, stages in arms.items()],
        "comparisons": [{"a": a, "b": b, "kind": kind, "result": c.results[kind],
                         "label": label.get(kind, f"{ec.prefixes} held-out prefixes, {greedy}")}
                        for a, b, c in comparisons for kind in COMPARED if kind in c.results],
        "judge_audit": audit,
        "judges": judges_view(ctx.cfg, judges),
        "notes": [judge_note(ctx), *unsafe_prefix_notes(ctx, evaluations)],
    })


def save_run_report(ctx: RunContext, results: RunResults, parents: list[str]) -> ReportRef:
    """Save the report under `reports/<run name>-<key of its results>`, with the committed
    artifacts among `parents` (URIs) as its lineage parents."""
    manifests = [m for uri in parents if (m := artifacts.load_committed(uri, ctx.storage_options))]
    uri = ctx.report_uri(results.model_dump(mode="json"))
    manifest = save_report(results, uri, ctx.storage_options, ctx.context({"run": ctx.cfg.run.name}, manifests))
    return ReportRef(uri=manifest.uri, html=store.join(manifest.uri, "report.html"),
                     markdown=store.join(manifest.uri, "report.md"))
