"""The train-rewriter recipe (METHOD §5.4) end to end: a tiny random model through the whole path in
seconds (checkpoint, card, lineage, reuse, the before/after numbers, the checkpoint as the
rewriter of `sip rewrite`); bad input as one line. The real SmolLM2 learning to copy is `slow`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipe_fixtures import chunks, read_metrics, save_tiny_llama, tiny_cfg  # noqa: F401  (chunks: fixture)

POLICY = "bundled:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tiny_rewriter(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-rewriter"))


def _cfg(root, init, *extra):
    return tiny_cfg(root, f"rewriter_train.init={init}", "rewriter_train.steps=3", "rewriter_train.batch_size=2",
                    "rewriter_train.group_size=4", "rewriter_train.suffix_tokens=6", "rewriter_train.device=cpu",
                    "rewriter_train.precision=fp32", "rewriter_train.max_prefix_tokens=24",
                    "rewriter_train.validation_rows=4", "rewriter_train.checkpoint_every=100",
                    "rewriter_train.lr=1e-3",
                    # plumbing on a random tiny model: its rewrites may all earn the same reward (no
                    # signal, no update), and the checkpoint, card and lineage are what is tested here
                    "rewriter_train.allow_no_update=true", *extra)


def test_a_rewriter_checkpoint_with_its_card_lineage_and_before_after_numbers(chunks, tmp_path, tiny_rewriter):
    from sip_core.augment.rewrites import rewrite_next_batch
    from sip_core.infra.run_context import RunContext
    from sip_core.llm.factory import open_llm
    from sip_core.recipes import train_rewriter

    cfg = _cfg(tmp_path, tiny_rewriter)
    final = train_rewriter.train(cfg, chunks)
    assert Path(final.uri).name == "final" and Path(final.uri).parent.name.startswith("rewriter-")
    metrics = read_metrics(final)
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(m["groups"] == 2 for m in metrics)
    assert all(0 <= m["reward_mean"] <= 1 for m in metrics)
    card = json.loads((Path(final.uri) / "config.json").read_text())["sip_rewriter"]
    assert card["prompt"] == "rewrite@3" and card["base_model"] == tiny_rewriter and card["copy_reward"] == "exact"
    # lineage: the chunks, the prompt's text, the judge that gave the reward, the base model's files
    assert chunks.artifact_id in final.parents and len(final.parents) == 4
    assert any(u.startswith("config://rewrite-prompt/") for u in final.parent_uris)
    assert any(u.startswith("config://judge/") for u in final.parent_uris)
    stats = final.stats
    assert 1 <= stats["before_rows"] == stats["after_rows"] <= 4 and stats["train_rows"] > 4
    assert stats["before_safe_rows"] + stats["before_unsafe_rows"] == stats["before_rows"]
    assert stats["before_copy_rate_safe"] is not None or stats["before_safe_rows"] == 0
    assert stats["validation_circular"] is True  # tiny.yaml: eval_judge is the training judge
    assert stats["validation_judge"] == "proxy:v1:none"
    again = train_rewriter.train(cfg, chunks)  # same chunks, prompt, judge, base model, settings: reused
    assert again.artifact_id == final.artifact_id

    # usable as the rewriter of `sip rewrite`: rewriter.backend=local rewriter.model=<final>
    used = cfg.replace({"rewriter.backend": "local", "rewriter.model": final.uri, "rewriter.max_tokens": 6})
    batch = rewrite_next_batch(RunContext(used), chunks, open_llm(used, "rewriter"), limit=2)
    assert batch.manifest is not None and batch.manifest.stats["rows"] == 2
    assert final.uri in batch.manifest.config["rewriter"]["model"]


def test_a_partition_with_nothing_to_train_is_one_line(chunks, tmp_path, tiny_rewriter):
    from sip_core.recipes import train_rewriter
    from sip_core.training.data import PartitionTooSmall, label_counts

    if label_counts(chunks, "train", {}).get("unsafe", 0) >= 4:
        pytest.skip("this chunk artifact has unsafe train chunks")
    with pytest.raises(PartitionTooSmall) as err:
        train_rewriter.train(_cfg(tmp_path, tiny_rewriter, "rewriter_train.data=unsafe",
                                  "rewriter_train.batch_size=4"), chunks)
    assert str(err.value).startswith("rewriter_train.data=unsafe: the chunk artifact's train split has")
    assert "\n" not in str(err.value) and not (tmp_path / "train").exists()


def test_validation_takes_unsafe_chunks_and_keeps_them_out_of_training():
    from sip_core.recipes.train_rewriter import validation_rows

    row = lambda cid, label, split: {"chunk_id": cid, "filter_label": label, "split": split}  # noqa: E731
    heldout = [row("h1", "rest", "heldout"), row("h2", "rest", "heldout"), row("h3", "rest", "heldout")]
    train = [row(f"t{i}", "unsafe" if i < 4 else "rest", "train") for i in range(10)]
    picked = validation_rows(heldout, train, 6)
    # half unsafe, from train (the held-out split has none); the rest safe, held-out split first
    assert [r["chunk_id"] for r in picked] == ["t0", "t1", "h1", "h2", "h3", "t4"]
    # never more than half of a kind's train chunks: as many stay for training
    assert [r["chunk_id"] for r in validation_rows([], train[:5], 8)] == ["t0", "t1"]


@pytest.mark.slow
def test_smollm2_learns_to_copy_safe_suffixes(chunks, tmp_path):
    """Where copying is rewarded (safe suffixes only, §5.4's exact-copy reward), GRPO raises the
    reward: 4 suffixes, 4 rewrites each at temperature 1 (so the group's rewards differ)."""
    from sip_core.recipes import train_rewriter

    cfg = tiny_cfg(tmp_path, f"rewriter_train.init={POLICY}", "rewriter_train.data=rest", "rewriter_train.chunks=4",
                   "rewriter_train.batch_size=4", "rewriter_train.group_size=4", "rewriter_train.suffix_tokens=8",
                   "rewriter_train.max_prefix_tokens=24", "rewriter_train.temperature=1.0", "rewriter_train.lr=3e-5",
                   "rewriter_train.steps=4", "rewriter_train.validation_rows=2", "rewriter_train.checkpoint_every=100",
                   "rewriter_train.keep_after_finish=0")
    final = train_rewriter.train(cfg, chunks)
    rewards = [m["reward_mean"] for m in read_metrics(final)]
    assert 0 < rewards[0] < 1 and sum(rewards[-2:]) / 2 > rewards[0] + 0.15, rewards
    assert final.stats["updates"] >= 1


@pytest.mark.slow
def test_the_command_on_a_corpus_stage_1_finds_clean_is_one_line_with_the_counts(tmp_path):
    """`sip train-rewriter` on the unsafe partition of bundled C4 at the paper's min_badwords (5):
    stage 1 flags nothing, so there is nothing to rewrite; one line naming the counts, exit 2."""
    import subprocess
    import sys

    from recipe_fixtures import CONFIG, ROOT, env_vars

    cmd = [sys.executable, "-m", "flows.cli", "train-rewriter", "--config", CONFIG, "--set", f"run.root={tmp_path}",
           "--set", "data.max_docs=60", "--set", "rewriter_train.data=unsafe"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env_vars())
    errors = [line for line in proc.stderr.splitlines() if line.startswith("sip: error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
    assert "rewriter_train.data=unsafe" in errors[0] and "0 selected chunks (by label: rest" in errors[0]
    assert "stage 1 flagged nothing" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "train").exists() or not any((tmp_path / "train").rglob("final"))
