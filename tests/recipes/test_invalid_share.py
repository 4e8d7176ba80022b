"""A dead judge trains nothing and ships nothing: pretrain.max_invalid_share stops the run in one
line with no final/, no checkpoint without an update, and a rerun once the judge is back trains
for real in the same run folder (no stale "final" to reuse). A live judge whose every judgment
gives no training signal (all ties, all-zero rewards) ships nothing either: a final/ with zero
optimizer updates is never written unless `<section>.allow_no_update` asks for it. The judge is
the fake OpenAI server."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from fake_openai import FakeOpenAI
from recipe_fixtures import ROOT, chunks, cli_args, env_vars, read_metrics, tiny_cfg  # noqa: F401  (chunks: fixture)

OPTION = {n: re.compile(rf"BEGIN OPTION {n}[^>]*>>>\n(.*?)\n<<<END OPTION {n}", re.S) for n in (1, 2)}


def prefers_longer(messages) -> str:
    """A judge with a consistent taste: the longer option wins in either order."""
    text = messages[-1]["content"]
    one, two = (m.group(1) if (m := OPTION[n].search(text)) else "" for n in (1, 2))
    return f"Compared.\nConclusion: Option {1 if len(one) >= len(two) else 2}"


def judge_sets(url: str, *extra: str) -> tuple[str, ...]:
    return ("judge.backend=openai", "judge.model=fake-judge", f"judge.base_url={url}", "judge.max_retries=0",
            "judge.parse_retries=0", "pretrain.steps=2", "pretrain.suffix_tokens=8", *extra)


def _run_dirs(root) -> list:
    return sorted(p for p in (root / "train").glob("pretrain-dpo*/*") if p.is_dir()) if (root / "train").exists() \
        else []


def test_dead_judge_stops_at_step_1_keeping_nothing(chunks, tmp_path):
    from sip_core.recipes import pretrain
    from sip_core.training.recipe import TrainingStopped

    root = tmp_path / "run"
    with FakeOpenAI(faults=lambda n, messages: "500") as srv:
        with pytest.raises(TrainingStopped) as stopped:
            pretrain.train(tiny_cfg(root, *judge_sets(srv.base_url, "pretrain.checkpoint_every=1")), chunks)
    message = str(stopped.value)
    assert "\n" not in message and "stopped at step 1/2" in message and "skipped_invalid 2 of 2" in message
    assert "no update was made, nothing kept" in message, message
    assert "(skipped_invalid 2 of 2; pretrain.max_invalid_share 0.5)" in message, message  # the real key
    assert not list(root.rglob("final")) and not list(root.rglob("step-*"))


@pytest.mark.slow
def test_dead_judge_stops_in_one_line_then_a_rerun_trains_for_real(chunks, tmp_path):
    from sip_core.recipes import pretrain
    from sip_core.training.recipe import TrainingStopped

    root = tmp_path / "run"
    with FakeOpenAI(faults=lambda n, messages: "500", responder=prefers_longer) as srv:
        cfg = tiny_cfg(root, *judge_sets(srv.base_url))
        with pytest.raises(TrainingStopped) as stopped:
            pretrain.train(cfg, chunks)
        dead_calls = srv.stats()["requests"]
        srv.faults = None  # the endpoint recovers: same URL, same model, same run folder
        final = pretrain.train(cfg, chunks)
        assert srv.stats()["counts"].get("ok", 0) > 0
    message = str(stopped.value)
    assert "\n" not in message and "stopped at step 1/2" in message and "skipped_invalid 2 of 2" in message
    assert "no update was made, nothing kept" in message, message
    assert dead_calls > 0
    metrics = read_metrics(final)
    assert [m["step"] for m in metrics] == [1, 2]  # trained from step 1: nothing was resumed or reused
    assert any(m["updated"] for m in metrics) and all(m["skipped_invalid"] == 0 for m in metrics)
    assert final.uri.startswith(str(root))


def test_no_final_without_an_update(chunks, tmp_path):
    """max_invalid_share=1 lets a dead judge run every step; with no update, finish() refuses."""
    from sip_core.infra import artifacts
    from sip_core.recipes import pretrain
    from sip_core.training.recipe import TrainingStopped

    root = tmp_path / "run"
    with FakeOpenAI(faults=lambda n, messages: "500") as srv:
        cfg = tiny_cfg(root, *judge_sets(srv.base_url, "pretrain.max_invalid_share=1.0",
                                         "pretrain.checkpoint_every=1"))
        with pytest.raises(TrainingStopped, match=r"none of its 2 steps updated the model \(skipped_invalid 4"):
            pretrain.train(cfg, chunks)
    assert not any(artifacts.load_committed(str(d), {}) for d in root.rglob("final"))


def test_no_final_when_no_step_had_a_training_signal(chunks, tmp_path):
    """Every judgment valid, every candidate set a tie (Option 1 wins in either order): no step
    updates the model, so finish() commits no final/ and says why and what to change, in one line.
    allow_no_update commits the unchanged model, in a run folder of its own."""
    from sip_core.infra import artifacts
    from sip_core.recipes import pretrain
    from sip_core.training.recipe import TrainingStopped

    root = tmp_path / "run"
    with FakeOpenAI(responder=lambda messages: "Compared.\nConclusion: Option 1") as srv:
        sets = judge_sets(srv.base_url, "pretrain.checkpoint_every=1")
        with pytest.raises(TrainingStopped) as stopped:
            pretrain.train(tiny_cfg(root, *sets), chunks)
        assert srv.stats()["counts"].get("ok", 0) == srv.requests > 0  # every judgment was answered
        committed = [d for d in root.rglob("final") if artifacts.load_committed(str(d), {})]
        allowed = pretrain.train(tiny_cfg(root, *sets, "pretrain.allow_no_update=true"), chunks)
    message = str(stopped.value)
    assert "\n" not in message and message.startswith(
        "pretrain-dpo: none of its 2 steps updated the model: no step had a training signal (skipped_all_equal 4)"), \
        message
    assert "every candidate set tied" in message and "pretrain.k_rollouts" in message, message  # what to change
    assert "no final/ committed" in message and "pretrain.allow_no_update=true" in message, message
    assert committed == []
    assert not any(m["updated"] for m in read_metrics(allowed)) and allowed.stats["updates"] == 0
    assert [str(d) for d in root.rglob("final") if artifacts.load_committed(str(d), {})] == [allowed.uri]


def test_allow_no_update_is_keyed_only_when_set(tmp_path):
    """Default run folders keep their key (a resumed run still finds its folder); an allowing run
    gets its own, so a default run never reuses the unchanged model it committed."""
    from sip_core.infra.run_context import RunContext
    from sip_core.training.session import run_key

    default, allowing = (tiny_cfg(tmp_path, *extra) for extra in ((), ("pretrain.allow_no_update=true",)))
    key = run_key(RunContext(default), "pretrain-dpo", default.pretrain, [])
    assert "allow_no_update" not in key["train"] and "max_invalid_share" not in key["train"]
    assert run_key(RunContext(allowing), "pretrain-dpo", allowing.pretrain, [])["train"]["allow_no_update"] is True
    assert RunContext(default).train_uri("pretrain-dpo", key) != \
        RunContext(allowing).train_uri("pretrain-dpo", run_key(RunContext(allowing), "pretrain-dpo", allowing.pretrain, []))


def test_rlmt_no_final_when_every_group_had_equal_rewards(chunks, tmp_path):
    """RLMT with a judge that rewards no prediction: every group carries no signal, no update, no final/."""
    from sip_core.infra import artifacts
    from sip_core.recipes import rlmt
    from sip_core.training.recipe import TrainingStopped

    root = tmp_path / "run"
    with FakeOpenAI(responder=lambda messages: '{"score": 0}') as srv:
        cfg = tiny_cfg(root, "judge.backend=openai", "judge.model=fake-judge", f"judge.base_url={srv.base_url}",
                       "judge.max_retries=0", "judge.parse_retries=0", "rlmt.steps=2", "rlmt.batch_size=1",
                       "rlmt.group_size=2", "rlmt.thought_tokens=8", "rlmt.predict_tokens=8", "rlmt.rollout_batch=2",
                       "rlmt.checkpoint_every=1")
        with pytest.raises(TrainingStopped) as stopped:
            rlmt.train(cfg, chunks)
        assert srv.stats()["counts"].get("ok", 0) == srv.requests > 0
    message = str(stopped.value)
    assert "\n" not in message and message.startswith(
        "rlmt: none of its 2 steps updated the model: no step had a training signal (no_signal_groups 2)"), message
    assert "rlmt.group_size" in message and "rlmt.allow_no_update=true" in message, message
    assert not any(artifacts.load_committed(str(d), {}) for d in root.rglob("final"))


@pytest.mark.slow
def test_recipe_command_stopped_is_one_line_exit_3(chunks, tmp_path):
    """The recipe process (what the Prefect task launches) says why in one stderr line, exit 3,
    and announces the stop as an event the task turns into exit 1 of `sip`."""
    with FakeOpenAI(faults=lambda n, messages: "500") as srv:
        cmd = [sys.executable, "-m", "sip_core.recipes.pretrain",
               *cli_args(tmp_path / "run", chunks.uri, *judge_sets(srv.base_url))]
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env_vars(), timeout=600)
    assert run.returncode == 3, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith("error: pretrain-dpo stopped at step 1/2"), run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert '"event": "stopped"' in run.stdout
    assert not list((tmp_path / "run").rglob("final"))
