from pathlib import Path

import pytest

from sip_core.config import ConfigError, SipConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_method():
    cfg = SipConfig()
    assert cfg.data.suffix_tokens == 128
    assert cfg.filter.min_badwords == 5 and cfg.filter.combine == "or"
    assert cfg.model.policy == "bundled:smollm2-135m-instruct"


@pytest.mark.parametrize("name", ["tiny.yaml", "smoke.yaml", "gpu-cluster.yaml", "redpajama-safety.yaml",
                                  "lifecycle-tiny.yaml", "lifecycle-smoke.yaml", "train-judge.yaml",
                                  "train-rewriter.yaml", "lifecycle-tiny-trained-judge.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.data.suffix_tokens >= 1


def test_overrides_are_typed_and_win_over_the_file():
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["data.max_docs=7", "run.root=s3://b/p",
                                                        "filter.combine=and", "run.storage_options={endpoint_url: x}"])
    assert cfg.data.max_docs == 7 and cfg.run.root == "s3://b/p" and cfg.filter.combine == "and"
    assert cfg.run.storage_options == {"endpoint_url": "x"}


@pytest.mark.parametrize("overrides, fragment", [
    (["data.bogus=1"], "unknown config key: data.bogus"),
    (["bogus.key=1"], "unknown config key: bogus"),
    (["data.suffix_tokens=0"], "data.suffix_tokens"),
    (["filter.combine=xor"], "filter.combine"),
    (["data.max_docs"], "key=value"),
    (["judge.criteria={qualty: 1.0}"], "unknown criteria ['qualty']"),
    (["judge.criteria=[]"], "at least one criterion"),
])
def test_bad_overrides_give_one_line_errors(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_bare_off_gate_is_off_not_a_type_error(tmp_path):
    """YAML 1.1 reads `off` as false; `judge.gate=off` is how a user writes it, on the line or in a file."""
    assert load_config(None, ["judge.gate=off", "eval_judge.gate=off"]).judge.gate == "off"
    (tmp_path / "c.yaml").write_text("judge:\n  gate: off\n")
    assert load_config(tmp_path / "c.yaml").judge.gate == "off"
    with pytest.raises(ConfigError, match="judge.gate"):
        load_config(None, ["judge.gate=true"])


def test_criteria_listed_by_name_weigh_one_each():
    cfg = load_config(None, ["judge.criteria=[quality, safety]"])
    assert cfg.judge.criteria == {"quality": 1.0, "safety": 1.0}


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  sufix_tokens: 64\n")
    with pytest.raises(ConfigError, match=r"unknown config key: data.sufix_tokens \(from .*typo.yaml\)"):
        load_config(typo)


def test_extends_merges_key_by_key(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("data:\n  max_docs: 50\n  suffix_tokens: 64\nrun:\n  name: base\n")
    child = tmp_path / "sub" / "child.yaml"
    child.parent.mkdir()
    child.write_text("extends: ../base.yaml\ndata:\n  max_docs: 10\n")
    cfg = load_config(child, ["run.name=cli"])
    assert (cfg.data.max_docs, cfg.data.suffix_tokens, cfg.run.name) == (10, 64, "cli")
    tiny, lifecycle = load_config(ROOT / "configs" / "tiny.yaml"), load_config(ROOT / "configs" / "lifecycle-tiny.yaml")
    assert lifecycle.pretrain.steps == tiny.pretrain.steps and lifecycle.data == tiny.data
    assert lifecycle.sft.steps < tiny.sft.steps


def test_extends_errors_name_the_file(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(loop)
    orphan = tmp_path / "orphan.yaml"
    orphan.write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="not found: .*nowhere.yaml"):
        load_config(orphan)


def test_the_trained_judge_preset_is_tiny_with_train_judges_settings():
    """The preset trains the judge at the size that learned here (configs/train-judge.yaml) and
    changes nothing else of the main job but RLMT's reward (the probs judge's expected verdict)."""
    tiny = load_config(ROOT / "configs" / "lifecycle-tiny.yaml")
    preset = load_config(ROOT / "configs" / "lifecycle-tiny-trained-judge.yaml")
    trained = load_config(ROOT / "configs" / "train-judge.yaml")
    assert preset.lifecycle.train_judge and not tiny.lifecycle.train_judge
    keys = ("objective", "rules", "chunks", "prefix_tokens", "option_tokens", "lr", "batch_size", "grad_accum")
    assert {k: getattr(preset.judge_train, k) for k in keys} == {k: getattr(trained.judge_train, k) for k in keys}
    assert preset.judge_train.steps == 180
    assert preset.pretrain == tiny.pretrain and preset.eval == tiny.eval
    assert preset.rlmt == tiny.rlmt.model_copy(update={"reward": "expected"}) and tiny.rlmt.reward == "binary"


def test_the_safety_preset_runs_the_safety_setting_on_both_bundled_samples():
    """safety-tiny: NTP and SIP on the unsafe partition of C4 + RedPajama, the rewriter trained
    first, Table 1's safety suites; the main job's sizes otherwise."""
    from sip_core.config import LifecycleParams

    tiny = load_config(ROOT / "configs" / "lifecycle-tiny.yaml")
    preset = load_config(ROOT / "configs" / "lifecycle-safety-tiny.yaml")
    assert LifecycleParams(preset="safety-tiny").load() == preset
    assert preset.lifecycle.setting == "safety" and tiny.lifecycle.setting == "thinking"
    assert preset.lifecycle.train_rewriter and preset.pretrain.data == "unsafe"
    assert preset.data.source == ["bundled:c4", "bundled:redpajama"] and preset.data.max_docs is None
    assert {"winrate_unsafe", "safety_unsafe_prefixes", "safety_rtp", "xstest"} <= set(preset.eval.suites)
    assert preset.run.root != tiny.run.root
    assert preset.pretrain.model_copy(update={"data": "all"}) == tiny.pretrain
