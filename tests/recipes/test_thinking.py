"""The thinking mid-training recipes end to end: SFT on thought rows, then RLMT from the same data."""

from __future__ import annotations

import math

from recipe_fixtures import chunks, read_metrics, tiny_cfg  # noqa: F401  (chunks: fixture)


def test_sft_and_rlmt_recipes_run(chunks, tmp_path):
    from sip_core.llm.factory import open_llm
    from sip_core.infra.run_context import RunContext
    from sip_core.recipes import rlmt, sft
    from sip_core.augment.thought_insertion import insert_thoughts

    cfg = tiny_cfg(tmp_path / "run", "teacher.backend=proxy", "sft.steps=2", "sft.batch_size=1",
                   "sft.max_tokens=64", "sft.heldout_rows=1", "rlmt.steps=2", "rlmt.batch_size=1",
                   "rlmt.group_size=2", "rlmt.thought_tokens=8", "rlmt.predict_tokens=8", "rlmt.rollout_batch=4",
                   # the proxy judge rewards none of these 8-token predictions, so RLMT may make no update:
                   # this tests the plumbing, so it commits the unchanged model deliberately
                   "rlmt.allow_no_update=true")
    thoughts = insert_thoughts(RunContext(cfg), chunks, open_llm(cfg, "teacher"), limit=16)
    assert thoughts.stats["kept"] > 0 and thoughts.stats["halves"]["sft"] > 0
    final = sft.train(cfg, thoughts)
    metrics = read_metrics(final)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert math.isfinite(m["thought_nll"]) and math.isfinite(m["text_nll"]) and m["thought_nll"] > 0
    assert "before_heldout_thought_nll" in final.stats and "after_heldout_text_nll" in final.stats

    final = rlmt.train(cfg, chunks, thoughts)
    metrics = read_metrics(final)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert 0.0 <= m["reward_mean"] <= 1.0
        assert 0 <= m["no_signal_groups"] <= m["groups"] == 1
        assert m["judge_calls"] >= 0
        # budget forcing: every sample reaches a prediction, so none is a format failure
        assert m["format_failures"] == 0 and 0 <= m["forced_closes"] <= 2
    assert final.stats["updates"] == sum(m["updated"] for m in metrics)  # the stats say how many
