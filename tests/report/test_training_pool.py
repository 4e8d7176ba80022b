"""The SIP candidate pool in the report's Training section: the rollout-chosen rate beside the pool
composition (pool size, sets with a rewrite) and the tie-break seed, from planted metrics rows and
from a metrics.parquet; older runs that did not log the pool columns read "not logged"."""

from __future__ import annotations

import pyarrow as pa
import pytest

from sip_core.config import load_config
from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import ArtifactRef
from sip_core.infra.run_context import RunContext
from sip_core.report import Arm, RunResults, Stage, render_report
from sip_core.report.assemble import stage_view

CAPTION = "*SIP candidate pool per stage"
HEADER = ("| arm | stage | rollout chosen (mean over steps) | rollout chosen (last ¼ mean) | "
          "rollout share of pool (chance) | original / rewrite chosen (mean) | "
          "pool size (candidates per set) | sets with a rewrite in the pool | tie-break seed |")
# rollout chosen 50% → 75% over 4 steps: mean 62.5%, last quarter (step 4) 75.0%; pools of 18 with the
# original, a rewrite in 2, 1, 3, 0 of 8 sets and the rest rollouts: rollout share (17 - r/8) / 18, mean 93.4%;
# original chosen 50% → 25% (mean 37.5%), rewrite never
ROW = "| sip | 1. pretrain | 62.5% | 75.0% | 93.4% | 37.5% / 0.0% | 18 | 6 of 32 (18.8%) | 7 |"
OLD_ROW = "62.5% | 75.0% | not logged | 37.5% / 0.0% | not logged | not logged | not logged |"


def sip_rows(steps: int = 4, rewrites: tuple[int, ...] = (2, 1, 3, 0), pool: bool = True) -> list[dict]:
    """Per-step rows of a SIP stage: 8 sets a step, the rollout chosen in 50% → 75% of them."""
    rows = []
    for s in range(steps):
        row = {"step": s + 1, "loss": 0.7 - 0.05 * s, "sets": 8, "skipped_all_equal": 0,
               "chosen_share_original": 0.5 - s / 12, "chosen_share_rewrite": 0.0,
               "chosen_share_rollout": 0.5 + s / 12}
        if pool:
            row |= {"pool_size": 18, "pool_rewrites": rewrites[s], "tie_break_seed": 7}
        rows.append(row)
    return rows


def render(*stages: Stage) -> str:
    return render_report(RunResults(run_name="pool", arms=[Arm(name="sip", stages=list(stages))]),
                         with_plots=False).markdown


def test_pool_composition_beside_the_rollout_chosen_rate():
    md = render(Stage(recipe="pretrain", metrics=sip_rows()), Stage(recipe="sft", metrics=[{"step": 1, "loss": 2.0}]))
    assert CAPTION in md and HEADER in md
    # rollout chosen 50% → 75% (mean 62.5%), 18 candidates a set, 6 of the 32 sets held a rewrite
    assert ROW in md
    assert "| sip | 2. sft |" not in md.split(CAPTION)[1]  # a stage that judged no pools has no pool row
    varying = sip_rows()
    varying[2]["pool_size"] = 17  # a set lost a candidate: the range is shown, not one value
    assert "| 17–18 | 6 of 32 (18.8%) | 7 |" in render(Stage(recipe="pretrain",
                                                                                  metrics=varying))


def test_runs_without_the_pool_columns_say_not_logged():
    md = render(Stage(recipe="pretrain", metrics=sip_rows(pool=False)))
    assert "| sip | 1. pretrain | " + OLD_ROW in md
    no_sets = [{k: v for k, v in r.items() if k != "sets"} for r in sip_rows()]
    assert "| 18 | 6 | 7 |" in render(Stage(recipe="pretrain", metrics=no_sets))  # no share without a count
    plain = render(Stage(recipe="sft", metrics=[{"step": 1, "loss": 2.0}]), Stage(recipe="rlmt"))
    assert CAPTION not in plain and "no metrics logged" in plain  # no SIP stage: no pool table


@pytest.fixture
def ctx(tmp_path) -> RunContext:
    return RunContext(load_config(None, [f"run.root={tmp_path / 'run'}", "run.name=demo", "judge.model=none"]))


def _stage(ctx: RunContext, name: str, rows: list[dict]) -> Stage:
    uri = f"{ctx.root}/train/{name}"
    stats = {"metrics_uri": f"{uri}-metrics.parquet"}
    store.write_bytes(stats["metrics_uri"], store.parquet_bytes(pa.Table.from_pylist(rows)))
    manifest = artifacts.write_json_artifact(uri, "final.json", stats, ctx.context({"recipe": name}, []),
                                             kind="checkpoint")
    return stage_view(ctx, "pretrain", ArtifactRef.of(manifest))


def test_pool_columns_read_from_metrics_parquet(ctx):
    new, old = _stage(ctx, "new", sip_rows()), _stage(ctx, "old", sip_rows(pool=False))
    md = render(new, old)
    assert ROW in md
    assert "| sip | 2. pretrain | " + OLD_ROW in md


def test_curve_aggregates_use_all_steps_and_the_last_window():
    from sip_core.report.curves import aggregate, last_window, pool_composition, running_mean

    assert running_mean([1.0, 0.0, 1.0, 0.0], 2) == [1.0, 0.5, 0.5, 0.5]
    assert last_window([float(i) for i in range(10)]) == [8.0, 9.0]  # the last quarter, at least one step
    assert aggregate(sip_rows(), "chosen_share_rollout", pct=True) == "mean 62.5% · last ¼ 75.0%"
    xs, orig, rew, roll = pool_composition(sip_rows())
    assert xs == [1.0, 2.0, 3.0, 4.0] and orig == [1 / 18] * 4
    assert [round(r * 18 * 8) for r in rew] == [2, 1, 3, 0]  # rewrites per 8 sets, spread over a pool of 18
    assert all(abs(o + w + r - 1) < 1e-12 for o, w, r in zip(orig, rew, roll))
