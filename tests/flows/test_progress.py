"""The console's progress lines: counts, rate and ETA; a recipe step as one compact line."""

from __future__ import annotations

from tasks.progress import CountProgress, eta, step_line


def test_eta_reads_like_a_clock():
    assert [eta(5), eta(65), eta(3725), eta(None), eta(float("nan"))] == ["5s", "1m05s", "1h02m", "?", "?"]


def test_count_progress_logs_counts_rate_and_eta():
    lines = []

    class Log:
        def info(self, line):
            lines.append(line)

    progress = CountProgress("rewrite", 4, Log(), every_s=0.0)
    progress(1)
    progress(3)
    assert lines[0].startswith("rewrite: 1/4 calls, ") and "ETA " in lines[0]
    assert lines[-1].startswith("rewrite: 4/4 calls, ") and lines[-1].endswith("ETA 0s")


def test_a_step_is_one_short_line_and_failed_work_shows():
    row = {"recipe": "pretrain-dpo", "step": 3, "of": 30, "loss": 0.693147, "elapsed_s": 30.0, "skipped_invalid": 0,
           "chosen_share_rewrite": 0.5, "time_generate_s": 12.3, "grad_norm": 1.2, "lr": 5e-6}
    assert step_line(row, 0) == "pretrain-dpo step 3/30, loss 0.6931, elapsed 30s, ETA 4m30s"
    resumed = {**row, "step": 12, "elapsed_s": 20.0, "skipped_invalid": 2}
    assert step_line(resumed, 10) == "pretrain-dpo step 12/30, loss 0.6931, skipped_invalid 2, elapsed 20s, ETA 3m00s"
    no_reward = {"recipe": "rewriter", "step": 4, "of": 20, "loss": 0.0, "reward_mean": 0.0, "elapsed_s": 40.0}
    assert step_line(no_reward, 0) == "rewriter step 4/20, loss 0, reward_mean 0, elapsed 40s, ETA 2m40s"
    assert step_line({"recipe": "rlmt", "event": "checkpoint", "step": 10}, 0) == "rlmt checkpoint: step 10"
