"""The lifecycle's judge wiring without running it: lifecycle.train_judge swaps the training judge
for the trained checkpoint (audited with gate enforce on the dimensions training uses), and leaves eval_judge alone."""

from __future__ import annotations

from types import SimpleNamespace

from sip_core.config import load_config


def test_train_judge_option_points_the_training_judge_at_the_checkpoint(tmp_path, monkeypatch):
    import flows.lifecycle as lifecycle
    import tasks.train_judge

    cfg = load_config(None, [f"run.root={tmp_path}"])
    assert lifecycle.trained_judge(cfg, chunks=None) is cfg  # off by default: nothing trained
    ckpt = tmp_path / "train" / "judge-abc" / "final"
    ckpt.mkdir(parents=True)
    calls = []
    monkeypatch.setattr(tasks.train_judge, "train_judge_task",
                        lambda c, chunks: calls.append(chunks) or SimpleNamespace(uri=str(ckpt)))
    on = cfg.replace({"lifecycle.train_judge": True})
    swapped = lifecycle.trained_judge(on, chunks="chunks-ref")
    assert calls == ["chunks-ref"]
    assert (swapped.judge.backend, swapped.judge.model, swapped.judge.gate) == ("local", str(ckpt), "enforce")
    assert swapped.judge.gate_dimensions == ["quality"]  # what SIP's score asks it; factuality is reported only
    assert swapped.eval_judge == cfg.eval_judge

    from sip_core.judge.independence import judge_roles

    assert judge_roles(swapped)["circular"] is False and judge_roles(cfg)["circular"] is True
