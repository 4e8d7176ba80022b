"""The train-judge recipe end to end on a tiny item set with a tiny random model (seconds): the
checkpoint, its card (prompt versions, verdict mode), lineage, reuse, loss going down, GRPO's
reward mean going up; bad input as one line and exit 2. The real SmolLM2 run is `slow`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recipe_fixtures import (CONFIG, ROOT, chunks, env_vars, read_metrics, save_tiny_llama,  # noqa: F401  (chunks: fixture)
                             tiny_cfg)

POLICY = "bundled:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-judge"))


def _cfg(root, init, *extra):
    # 3 chunks -> a dozen items; a batch holds all of them, so every step sees the same items
    return tiny_cfg(root, f"judge_train.init={init}", "judge_train.chunks=3", "judge_train.validation_fraction=0",
                    "judge_train.batch_size=64", "judge_train.steps=4", "judge_train.lr=3e-3",
                    "judge_train.device=cpu", "judge_train.precision=fp32", "judge_train.prefix_tokens=12",
                    "judge_train.option_tokens=8", "judge_train.checkpoint_every=100", *extra)


def test_sft_trains_a_judge_checkpoint_with_its_card_and_reuses_it(chunks, tmp_path, tiny_judge):
    from sip_core.infra import artifacts
    from sip_core.recipes import train_judge

    cfg = _cfg(tmp_path, tiny_judge)
    final = train_judge.train(cfg, chunks)
    assert Path(final.uri).name == "final" and Path(final.uri).parent.name.startswith("judge-")
    losses = [m["loss"] for m in read_metrics(final)]
    assert len(losses) == 4 and losses[-1] < losses[0]
    card = train_judge.judge_card(final.uri)
    assert card["prompts"] == {"quality": "judge_quality@1", "safety": "judge_safety@1"}
    assert card["verdict"] == "probs" and card["prefill"] is True and card["objective"] == "sft"
    assert card["base_model"] == tiny_judge and card["prefix_tokens"] == 12 and card["option_tokens"] == 8
    assert (Path(final.uri) / "model.safetensors").is_file()
    items = artifacts.load_manifest(card["items"])
    # lineage: the items, the prompt versions, the base model's files
    assert items.artifact_id in final.parents and len(final.parents) == 3
    assert any(u.startswith("config://judge-prompts/") for u in final.parent_uris)
    assert any(u.startswith(tiny_judge) for u in final.parent_uris)
    assert final.stats["train_items"] >= 8
    again = train_judge.train(cfg, chunks)  # same items, prompts, base model, settings: reused
    assert again.artifact_id == final.artifact_id


def test_grpo_raises_the_reward_mean(chunks, tmp_path, tiny_judge):
    from sip_core.recipes import train_judge

    cfg = _cfg(tmp_path, tiny_judge, "judge_train.objective=grpo", "judge_train.group_size=8",
               "judge_train.steps=8", "judge_train.lr=3e-2")
    final = train_judge.train(cfg, chunks)
    rewards = [m["reward_mean"] for m in read_metrics(final)]
    assert 0 < rewards[0] < 1 and sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.05
    # the judge it leaves is right more often on those items than the one it started from
    assert _accuracy(final.uri, final) > _accuracy(tiny_judge, final)


def _accuracy(model_ref: str, final) -> float:
    """Verdict accuracy (probability verdicts) of a model on the items `final` was trained on."""
    from sip_core.infra import artifacts
    from sip_core.infra.models import load_causal_lm
    from sip_core.judge.training_items import read_items
    from sip_core.llm.prompting import load_prompt
    from sip_core.recipes.train_judge import Encoded, accuracy_by, judge_card, verdict_probs

    items = read_items(artifacts.load_manifest(judge_card(final.uri)["items"]), {})
    prompts = {"pair": load_prompt("judge_quality"), "point": load_prompt("judge_safety")}
    model, tok = load_causal_lm(model_ref, "cpu")
    encoded = [Encoded(item, prompts, tok) for item in items]
    return accuracy_by(encoded, verdict_probs(model, encoded, tok.pad_token_id, "cpu"))["all"]


def test_a_judge_checkpoint_that_does_not_exist_is_one_line_and_exit_2(tmp_path, capsys):
    from flows.cli import main

    for init in (str(tmp_path / "nothing" / "final"), "runs/no-such-run/train/judge-x/final"):
        code = main(["train-judge", "--config", CONFIG, "--set", f"run.root={tmp_path}", "--init", init])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0 and "judge checkpoint not found" in err and init in err
    code = main(["train-judge", "--config", CONFIG, "--set", f"run.root={tmp_path}", "--set",
                 "judge_train.rules=[no_such_rule]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no_such_rule" in err and err.count("\n") == 0


def test_the_recipe_command_line_refuses_a_missing_judge_checkpoint(chunks, tmp_path):
    args = ["--config", CONFIG, "--chunks", chunks.uri, "--set", f"run.root={tmp_path}",
            "--set", f"judge_train.init={tmp_path / 'missing'}"]
    proc = subprocess.run([sys.executable, "-m", "sip_core.recipes.train_judge", *args], capture_output=True,
                          text=True, env=env_vars(), cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "judge checkpoint not found" in proc.stderr


@pytest.mark.slow
def test_smollm2_judge_learns_its_verdicts(chunks, tmp_path):
    """The real base model: a few SFT steps on the same items move validation-free training accuracy."""
    from sip_core.recipes import train_judge

    cfg = _cfg(tmp_path, POLICY, "judge_train.lr=3e-5", "judge_train.steps=3", "judge_train.batch_size=8")
    final = train_judge.train(cfg, chunks)
    losses = [m["loss"] for m in read_metrics(final)]
    assert losses[-1] < losses[0]
    assert json.loads((Path(final.uri) / "config.json").read_text())["sip_judge"]["verdict"] == "probs"
