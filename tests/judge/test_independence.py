"""Which judge trains, which grades, and when the comparison is circular (judge_roles)."""

from __future__ import annotations

import pytest

from sip_core.config import ConfigError, load_config
from sip_core.judge.independence import judge_roles, model_key


def _cfg(tmp_path, *overrides):
    return load_config(None, [f"run.root={tmp_path}", *overrides])


def test_same_model_spelled_three_ways_is_one_model(tmp_path):
    assert model_key("bundled:smollm2-135m-instruct") == model_key("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert model_key("smollm2-135m-instruct") == model_key("bundled:smollm2-135m-instruct")
    folder = tmp_path / "judge" / "final"
    folder.mkdir(parents=True)
    assert model_key(str(folder) + "/") == model_key(str(tmp_path / "judge" / ".." / "judge" / "final"))
    assert model_key("none") is None


def test_default_roles_are_reported_and_equal_judges_are_circular(tmp_path):
    roles = judge_roles(_cfg(tmp_path))
    assert roles["training"] == {"backend": "proxy", "model": "none", "verdict": "sample"}
    assert roles["evaluation"] == {"backend": "proxy", "model": "none", "verdict": "sample"}
    assert roles["circular"] and "the evaluation judge is the training judge" in roles["reasons"][0]


def test_trained_judge_graded_by_lexical_proxy_is_not_circular(tmp_path):
    ckpt = tmp_path / "train" / "judge-abc" / "final"
    ckpt.mkdir(parents=True)
    roles = judge_roles(_cfg(tmp_path, "judge.backend=local", f"judge.model={ckpt}", "judge.verdict=probs"))
    assert roles["training"] == {"backend": "local", "model": str(ckpt), "verdict": "probs"}
    assert roles == {**roles, "circular": False, "reasons": []}


def test_same_checkpoint_served_and_local_is_the_same_judge(tmp_path):
    ckpt = tmp_path / "judge"
    ckpt.mkdir()
    roles = judge_roles(_cfg(tmp_path, "judge.backend=local", f"judge.model={ckpt}", "eval_judge.backend=openai",
                             f"eval_judge.model={ckpt}"))
    assert roles["circular"] and roles["reasons"] == [f"the evaluation judge is the training judge (openai: {ckpt})"]


def test_a_judge_that_is_the_policy_or_the_reference_is_circular(tmp_path):
    roles = judge_roles(_cfg(tmp_path, "judge.backend=local", "judge.model=HuggingFaceTB/SmolLM2-135M-Instruct"))
    assert roles["circular"]
    assert any("is the policy" in r for r in roles["reasons"])
    assert any("DPO reference" in r for r in roles["reasons"])
    ref = tmp_path / "ref"
    ref.mkdir()
    roles = judge_roles(_cfg(tmp_path, f"pretrain.init={ref}", "eval_judge.backend=openai", f"eval_judge.model={ref}"))
    assert roles["reasons"] == [f"eval_judge's model {ref} is the DPO reference (pretrain.init)"]


@pytest.mark.parametrize("role", ["judge", "eval_judge"])
def test_proxy_scoring_lm_may_not_be_the_policy(tmp_path, role):
    with pytest.raises(ConfigError, match=rf"^{role}'s scoring LM bundled:smollm2-135m-instruct is the policy"
                                          rf".*set {role}.model=none"):
        _cfg(tmp_path, f"{role}.model=bundled:smollm2-135m-instruct")
    other = tmp_path / "other-lm"
    other.mkdir()
    assert _cfg(tmp_path, f"{role}.model={other}").model_dump()[role]["model"] == str(other)


def test_a_model_judge_needs_a_model(tmp_path):
    with pytest.raises(ConfigError, match="a local judge needs a model"):
        _cfg(tmp_path, "eval_judge.backend=local")


def test_the_evaluation_judge_is_audited_in_the_training_judges_place(tmp_path):
    from sip_core.judge.independence import as_training_judge

    cfg = _cfg(tmp_path, "judge.backend=local", f"judge.model={tmp_path}", "eval_judge.gate=warn",
               "eval_judge.audit_items=3")
    swapped = as_training_judge(cfg, "eval_judge")
    assert swapped.judge == cfg.eval_judge and swapped.judge.audit_items == 3 and swapped.judge.gate == "warn"
    assert as_training_judge(cfg, "judge") is cfg and cfg.judge.backend == "local"
