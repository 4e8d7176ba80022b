"""The lifecycle's settings without running them: what the safety setting trains and compares, and
lifecycle.train_rewriter pointing the rewriter at the trained checkpoint."""

from __future__ import annotations

from types import SimpleNamespace

from sip_core.config import load_config


def test_the_safety_setting_trains_ntp_and_sip_on_the_same_chunks_and_compares_all_three(monkeypatch):
    import flows.lifecycle as lifecycle

    submitted = []
    monkeypatch.setattr(lifecycle.pretrain_task, "submit",
                        lambda cfg, chunks: submitted.append((cfg.pretrain.objective, cfg.pretrain.data)) or cfg)
    cfg = load_config(None, ["pretrain.data=unsafe", "lifecycle.setting=safety"])
    setting = lifecycle.SETTINGS[cfg.lifecycle.setting]
    stages = setting.submit(cfg, "chunks", None)
    assert sorted(submitted) == [("dpo", "unsafe"), ("ntp", "unsafe")] and not setting.thoughts
    arms = setting.arms(stages)
    assert set(arms) == {"base", "base→NTP", "base→SIP(safety)"} and arms["base"] == []
    assert [r for r, _ in arms["base→SIP(safety)"]] == ["pretrain-dpo"]
    assert {a for pair in setting.pairs for a in pair} == set(arms)  # every arm is compared
    thinking = lifecycle.SETTINGS["thinking"]
    assert thinking.thoughts and thinking.pairs == lifecycle.PAIRS


def test_train_rewriter_option_points_the_rewriter_at_the_checkpoint(tmp_path, monkeypatch):
    import flows.lifecycle as lifecycle
    import tasks.train_rewriter

    cfg = load_config(None, [f"run.root={tmp_path}"])
    assert lifecycle.trained_rewriter(cfg, chunks=None) is cfg  # off by default: nothing trained
    ckpt = tmp_path / "train" / "rewriter-abc" / "final"
    ckpt.mkdir(parents=True)
    calls = []
    monkeypatch.setattr(tasks.train_rewriter, "train_rewriter_task",
                        lambda c, chunks: calls.append(chunks) or SimpleNamespace(uri=str(ckpt)))
    swapped = lifecycle.trained_rewriter(cfg.replace({"lifecycle.train_rewriter": True}), chunks="chunks-ref")
    assert calls == ["chunks-ref"]
    assert (swapped.rewriter.backend, swapped.rewriter.model) == ("local", str(ckpt))
    assert swapped.judge == cfg.judge and swapped.eval_judge == cfg.eval_judge
