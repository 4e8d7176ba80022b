"""The paper's ablations on the smoke config (METHOD §4.1, §4.4), one short run each: a judge-free
DPO of rewrite over rollout, NTP on rewrites, a factuality-only judged run on {suffix + K rollouts},
and a run that would skip every prefix for want of rewrites. The pool and pair builder's every
variant is unit-tested in tests/training/test_pools_and_schedule.py."""

from __future__ import annotations

import math

import pytest

from recipe_fixtures import ROOT, chunks, read_metrics  # noqa: F401  (chunks: fixture)
from rewrite_fixtures import write_rewrites

REWRITE = " A calm and careful rewrite of the passage."


def smoke_cfg(root, *extra: str):
    """configs/smoke.yaml on the CPU: the proxy judge without a scoring LM, one or two steps."""
    from sip_core.config import load_config

    return load_config(ROOT / "configs" / "smoke.yaml", [
        f"run.root={root}", "pretrain.device=cpu", "pretrain.precision=fp32", "pretrain.steps=1",
        "pretrain.eval_every=100", "pretrain.checkpoint_every=100", *extra])


def _rewrite_ids(cfg) -> list[int]:
    from sip_core.infra.models import load_tokenizer, resolve_model

    tok = load_tokenizer(resolve_model(cfg.model.policy, cfg.model.cache_dir))
    return tok(REWRITE, add_special_tokens=False)["input_ids"]


def test_judge_free_dpo_rewrite_over_rollout_skips_chunks_without_one(chunks, tmp_path):
    from sip_core.recipes import pretrain

    cfg = smoke_cfg(tmp_path, "pretrain.pairing=rewrite_vs_rollout", "pretrain.grad_accum=3")
    with_rewrite = write_rewrites(cfg, chunks, REWRITE, _rewrite_ids(cfg), keep=lambda i: i % 2 == 0)
    metrics = read_metrics(pretrain.train(cfg, chunks))
    assert len(metrics) == 1 and with_rewrite
    assert sum(m["sets"] + m["skipped_no_rewrite"] for m in metrics) == 2 * 3  # every prefix accounted for
    assert sum(m["skipped_no_rewrite"] for m in metrics) > 0 and sum(m["sets"] for m in metrics) > 0
    for m in metrics:
        assert m["judge_calls"] == 0 and "tie_break_seed" not in m  # no judge
        assert m["pool_rewrites"] == m["sets"]
        if m["sets"]:
            assert m["pool_size"] == 3.0  # suffix + rewrite + 1 rollout (smoke: k_rollouts 1)
            assert m["chosen_share_rewrite"] == 1.0 and m["rejected_share_rollout"] == 1.0
            assert math.isfinite(m["loss"]) and math.isfinite(m["dpo_margin"])


def test_ntp_on_rewrites_trains_on_the_rewrite(chunks, tmp_path):
    from sip_core.recipes import pretrain

    cfg = smoke_cfg(tmp_path, "pretrain.objective=ntp", "pretrain.pairing=rewrite", "pretrain.pool=rewrite+rollouts")
    write_rewrites(cfg, chunks, REWRITE, _rewrite_ids(cfg))
    [m] = read_metrics(pretrain.train(cfg, chunks))
    assert m["sets"] == 2 and m["chosen_share_rewrite"] == 1.0 and m["skipped_no_rewrite"] == 0
    assert m["pool_size"] == 1.0  # no rollouts are generated for an NLL on the rewrite
    assert math.isfinite(m["loss"])


class ScriptedRollouts:
    """A rollout engine whose every prefix gets the same two rollouts: one with a number the text
    never mentions (Possible Hallucination for the proxy), one with several (Definite)."""

    TEXTS = (" The council spent 4817 dollars on it.", " In 1687, 2931 and 7719 the council spent 5561 dollars.")

    def __init__(self, tok):
        self.ids = [tok(t, add_special_tokens=False)["input_ids"] for t in self.TEXTS]
        self.generated_tokens = 0

    def generate(self, prompts, n, spec):
        assert n == len(self.ids)
        return [[list(i) for i in self.ids] for _ in prompts]


def test_factuality_only_run_never_picks_the_original(chunks, tmp_path, monkeypatch):
    """{suffix + K rollouts} judged on factuality alone. Scored against itself the original suffix
    would be factual by construction and win every set over these rollouts; as the reference it is
    neither chosen nor rejected, and the less hallucinated rollout wins."""
    from sip_core.judge.scoring import step_tie_break_seed
    from sip_core.recipes import pretrain

    monkeypatch.setattr(pretrain, "HFRolloutEngine", lambda model, tok, *a: ScriptedRollouts(tok))
    cfg = smoke_cfg(tmp_path, "judge.criteria={factuality: 1.0}", "pretrain.pool=suffix+rollouts",
                    "pretrain.objective=rf_nll", "pretrain.k_rollouts=2", "pretrain.batch_size=4")
    [m] = read_metrics(pretrain.train(cfg, chunks))
    assert m["sets"] == 4 and m["pool_size"] == 3.0 and m["pool_rewrites"] == 0 and m["skipped_all_equal"] == 0
    assert m["judge_calls"] + m["judge_cache_hits"] == 4 * 2  # the rollouts only: the reference is never judged
    assert m["tie_break_seed"] == step_tie_break_seed(cfg.judge.tie_break_seed, 0)
    assert m["chosen_share_original"] == m["rejected_share_original"] == 0.0
    assert m["chosen_share_rollout"] == m["rejected_share_rollout"] == 1.0
    assert math.isfinite(m["loss"])


def test_a_pool_no_chunk_can_fill_fails_in_one_line(chunks, tmp_path):
    from sip_core.recipes import pretrain

    cfg = smoke_cfg(tmp_path, "pretrain.pool=suffix+rewrite+rollouts")
    with pytest.raises(ValueError) as err:
        pretrain.train(cfg, chunks)
    assert "needs rewrites" in str(err.value) and "\n" not in str(err.value)
