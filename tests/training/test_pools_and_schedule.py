"""The paper's pool and pairing variants (METHOD §4.1, §4.4) as the pair builder makes them, and
the learning-rate schedule (METHOD §5.1) at chosen steps. The recipe runs are in tests/recipes."""

from __future__ import annotations

import math

import pytest

ROWS = [{"chunk_id": f"c{i}", "suffix_ids": [1, 2, 3], "prefix_text": "p", "suffix_text": "s"} for i in range(3)]
ROLLOUTS = [[[4, 5], [6]], [[7], [8]], [[9], [10, 11]]]
REWRITES = {"c0": [20, 21, 22, 23], "c2": [24]}  # c1 has none
PROMPTS = [[100], [101], [102]]


def _pool(tokenizer, pool: str, pairing: str = "best_vs_worst"):
    from sip_core.training.judged_pairs import candidates, rows_in_pool

    kept = rows_in_pool(ROWS, REWRITES, pool, pairing)
    cands = candidates([ROWS[i] for i in kept], [ROLLOUTS[i] for i in kept], REWRITES, 3, 5, tokenizer, pool)
    return kept, cands


@pytest.mark.parametrize("pool, kept, origins", [
    ("suffix+rewrite_if_any+rollouts", [0, 1, 2], [["original", "rewrite", "rollout", "rollout"],
                                                   ["original", "rollout", "rollout"],
                                                   ["original", "rewrite", "rollout", "rollout"]]),
    ("suffix+rollouts", [0, 1, 2], [["original", "rollout", "rollout"]] * 3),
    ("suffix+rewrite+rollouts", [0, 2], [["original", "rewrite", "rollout", "rollout"]] * 2),
    ("rollouts", [0, 1, 2], [["rollout", "rollout"]] * 3),
    ("rewrite+rollouts", [0, 2], [["rewrite", "rollout", "rollout"]] * 2),
])
def test_each_pool_holds_what_it_names(tokenizer, pool, kept, origins):
    from sip_core.config import POOLS, PretrainConfig
    from sip_core.judge.scoring import SetScores
    from sip_core.training.judged_pairs import PairStats

    assert PretrainConfig().pool == "suffix+rewrite_if_any+rollouts"  # today's pool stays the default
    assert set(POOLS) == set(PretrainConfig.model_fields["pool"].annotation.__args__)
    got_kept, cands = _pool(tokenizer, pool)
    assert got_kept == kept and [[o for o, _ in ids] for ids in cands.ids] == origins
    assert all(s.reference == "s" and s.set_id.endswith(":5") for s in cands.sets)
    assert [[c.origin for c in s.candidates] for s in cands.sets] == origins
    stats = PairStats()
    stats["skipped_no_rewrite"] += len(ROWS) - len(kept)
    scored = [SetScores(s.set_id, list(range(len(ids))), {}, 1, 0, chosen=len(ids) - 1, rejected=0)
              for s, ids in zip(cands.sets, cands.ids)]
    pairs = stats.pairs([PROMPTS[i] for i in kept], cands, scored)
    assert pairs.prompts == [PROMPTS[i] for i in kept]
    assert pairs.rejected == [ids[0][1] for ids in cands.ids]
    m = stats.metrics()
    assert m["sets"] == len(kept) and m["skipped_no_rewrite"] == 3 - len(kept)
    assert m["pool_size"] == pytest.approx(sum(map(len, origins)) / len(origins))
    assert m["pool_rewrites"] == sum("rewrite" in o for o in origins)
    assert m["chosen_share_rollout"] == 1.0


def test_a_set_with_a_failed_judgment_is_skipped_not_paired(tokenizer):
    from sip_core.judge.scoring import SetScores
    from sip_core.training.judged_pairs import PairStats

    kept, cands = _pool(tokenizer, "suffix+rollouts")
    scored = [SetScores(s.set_id, list(range(len(ids))), {}, 1, invalid, chosen=len(ids) - 1, rejected=0)
              for s, ids, invalid in zip(cands.sets, cands.ids, (0, 1, 0))]
    stats = PairStats()
    pairs = stats.pairs([PROMPTS[i] for i in kept], cands, scored)
    assert pairs.prompts == [PROMPTS[0], PROMPTS[2]]  # the set with an unparsed vote gives no pair
    m = stats.metrics()
    assert m["skipped_invalid"] == 1 and m["invalid_judgments"] == 1 and m["sets"] == 3


def test_rlmt_skips_a_group_with_a_failed_judgment():
    from collections import Counter

    import torch

    from sip_core.recipes.rlmt import Rlmt
    from sip_core.training.think_then_predict import Rewards

    class Recorder:  # just enough of a recipe for _update: it records what would be trained on
        tc = type("TC", (), {"group_size": 2})()
        session = type("S", (), {"backward_nothing": lambda self: None})()
        rt = None
    stats = Counter()
    # group 0 differs only because a failed judgment scored 0; group 1 has the same rewards and no failure
    rewards = Rewards([1.0, 0.0, 1.0, 1.0], 0, 1, 0, failed=[False, True, False, False])
    assert Rlmt._update(Recorder(), [[1], [2]], [[None, None], [None, None]], rewards, stats) is None
    assert stats["skipped_invalid_groups"] == 1 and stats["no_signal_groups"] == 2
    assert torch.tensor(Rewards([0.5], 0, 0, 0).failed).tolist() == [False]


@pytest.mark.parametrize("pairing, pool, chosen, rejected", [
    ("rewrite_vs_rollout", "suffix+rewrite_if_any+rollouts", [[20, 21, 22], [24]], [[4, 5], [9]]),
    ("rewrite_vs_rollout", "rewrite+rollouts", [[20, 21, 22], [24]], [[4, 5], [9]]),
    ("rewrite", "suffix+rewrite_if_any+rollouts", [[20, 21, 22], [24]], []),
    ("rollout", "rollouts", [[4, 5], [7], [9]], []),
])
def test_judge_free_pairings_pick_by_origin(tokenizer, pairing, pool, chosen, rejected):
    from sip_core.config import PAIRINGS
    from sip_core.training.judged_pairs import PairStats

    kept, cands = _pool(tokenizer, pool, pairing)
    stats = PairStats()
    pairs = stats.picked_pairs([PROMPTS[i] for i in kept], cands, PAIRINGS[pairing])
    assert pairs.chosen == chosen and pairs.rejected == rejected and len(pairs.prompts) == len(chosen)
    m = stats.metrics()
    picked = PAIRINGS[pairing]
    assert m[f"chosen_share_{picked.chosen}"] == 1.0
    if picked.rejected:
        assert m[f"rejected_share_{picked.rejected}"] == 1.0
    else:
        assert all(m[f"rejected_share_{o}"] == 0.0 for o in ("original", "rewrite", "rollout"))


def test_a_run_without_the_rewrites_it_needs_fails_in_one_line():
    from sip_core.training.judged_pairs import check_rewrites

    check_rewrites(["c0", "c1"], {}, "suffix+rewrite_if_any+rollouts", "best_vs_worst")  # optional: fine
    check_rewrites(["c0", "c1"], {"c1": [1]}, "rewrite+rollouts", "best_vs_worst")  # one is enough
    for pool, pairing in (("suffix+rewrite+rollouts", "best_vs_worst"), ("rewrite+rollouts", "best_vs_worst"),
                          ("suffix+rewrite_if_any+rollouts", "rewrite")):
        with pytest.raises(ValueError) as err:
            check_rewrites(["c0", "c1"], {"c9": [1]}, pool, pairing)
        assert "needs rewrites" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, fragment", [
    (["pretrain.pairing=rewrite"], "objective ntp"),
    (["pretrain.pairing=rewrite_vs_rollout", "pretrain.objective=rf_nll"], "objective dpo"),
    (["pretrain.pairing=rewrite", "pretrain.objective=ntp", "pretrain.pool=suffix+rollouts"], "has none"),
    (["pretrain.pairing=rewrite_vs_rollout", "pretrain.k_rollouts=0"], "k_rollouts"),
    (["pretrain.pool=rewrite+rollouts", "pretrain.use_rewrites=false"], "use_rewrites"),
    (["judge.quality_mode=pivot", "pretrain.pool=rollouts"], "original suffix"),
])
def test_pairings_that_cannot_work_are_config_errors(overrides, fragment):
    from sip_core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=fragment):
        load_config(None, overrides)


def test_uses_judge_and_pool_follow_objective_and_pairing():
    from sip_core.config import load_config

    def pc(*o):
        return load_config(None, list(o)).pretrain

    assert pc().uses_judge and pc("pretrain.objective=rf_nll").uses_judge
    assert not pc("pretrain.objective=ntp").uses_pool  # the original suffix, as today
    free = pc("pretrain.pairing=rewrite_vs_rollout")
    assert free.uses_pool and not free.uses_judge
    assert load_config(None, ["judge.quality_mode=pivot", "pretrain.pool=rollouts", "pretrain.objective=ntp"])


# --------------------------------------------------------------------------- learning-rate schedule


def _tc(**kw):
    from sip_core.config import TrainConfig

    return TrainConfig(**kw)


def test_cosine_schedule_values_at_chosen_steps():
    from sip_core.training.session import lr_multiplier

    tc = _tc(steps=100, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_multiplier(0, tc) == pytest.approx(0.1)  # warmup start: lr / warmup_steps
    assert lr_multiplier(4, tc) == pytest.approx(0.5)
    assert lr_multiplier(9, tc) == pytest.approx(1.0)  # end of warmup: the peak
    assert lr_multiplier(9 + 45, tc) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert lr_multiplier(9 + 15, tc) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 6)))
    assert lr_multiplier(99, tc) == pytest.approx(0.1)  # the last step: the minimum ratio
    assert lr_multiplier(150, tc) == pytest.approx(0.1)  # past the end it stays there
    values = [lr_multiplier(s, tc) for s in range(9, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    no_warmup = _tc(steps=5, lr_schedule="cosine", min_lr_ratio=0.0)
    want = [1.0, 0.853553, 0.5, 0.146447, 0.0]
    assert [lr_multiplier(s, no_warmup) for s in range(5)] == pytest.approx(want, abs=1e-6)


def test_constant_schedule_is_the_default_and_unchanged():
    from sip_core.training.session import lr_multiplier

    assert _tc().lr_schedule == "constant"
    tc = _tc(steps=50, warmup_steps=4)
    assert [lr_multiplier(s, tc) for s in (0, 1, 3, 10, 49)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert [lr_multiplier(s, _tc(steps=3)) for s in range(3)] == [1.0, 1.0, 1.0]


def test_the_optimizer_follows_the_schedule():
    import torch

    from sip_core.training.session import lr_multiplier

    tc = _tc(steps=6, warmup_steps=2, lr=1e-3, lr_schedule="cosine", min_lr_ratio=0.1)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=tc.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(s, tc))
    used = []
    for _ in range(tc.steps):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert used[0] == pytest.approx(5e-4) and used[1] == pytest.approx(1e-3) and used[-1] == pytest.approx(1e-4)
