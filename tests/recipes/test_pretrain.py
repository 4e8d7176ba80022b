"""The pretrain recipe end to end: a rigged judge that must move the policy, kill -9 and resume,
DDP on CPU, and the command line's answer to a missing or wrong input artifact."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch

from conftest import POLICY
from recipe_fixtures import ROOT, chunks, cli_args, env_vars, read_metrics, tiny_cfg  # noqa: F401  (chunks: fixture)
from rewrite_fixtures import write_rewrites
from sip_core.llm.types import LLMBackend, LLMResult

TARGET = " Purple elephants dance quietly under the silver moon."


@pytest.fixture(scope="module")
def policy():
    """The real SmolLM2 policy in fp32, eval mode."""
    from sip_core.infra.models import load_causal_lm

    return load_causal_lm(POLICY)


# --------------------------------------------------------------------------- rigged judge


class RiggedBackend(LLMBackend):
    """A judge that always prefers the option holding the target string (pairs without it: option 1
    in both orders, i.e. a tie)."""

    kind, model_id = "rigged", "rigged"

    def __init__(self, target: str):
        self.target, self.seen = target.strip(), 0

    async def agenerate(self, requests, progress=None, on_result=None):
        out = []
        for i, req in enumerate(requests):
            assert req.prompt.startswith("quality@"), req.prompt
            a, b = req.inputs["option_1"], req.inputs["option_2"]
            pick = 2 if self.target in b and self.target not in a else 1
            out.append(LLMResult(f"Both read fine.\nConclusion: Option {pick}"))
            if on_result:
                on_result(i, out[-1])
        self.seen += len(requests)
        return out


def _write_target_rewrites(cfg, chunks, target_ids: list[int]) -> None:
    """A committed rewrite batch (the real rewrite artifact layout) whose every rewrite is TARGET."""
    write_rewrites(cfg, chunks, TARGET, target_ids)


def _target_logprob(model, tok, prefixes: list[list[int]], target_ids: list[int]) -> float:
    from sip_core.training.logprobs import completion_logprobs

    with torch.no_grad():
        summed, _, _ = completion_logprobs(model, prefixes, [target_ids] * len(prefixes), tok.pad_token_id)
    return float(summed.mean())


def test_rigged_judge_raises_target_likelihood(chunks, policy, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from sip_core.llm.cache import CachedLLM, JudgmentCache
    from sip_core.recipes import pretrain
    from sip_core.training import checkpoint, data

    base, tok = policy
    cfg = tiny_cfg(tmp_path / "run", "pretrain.steps=5", "pretrain.lr=1e-4", "pretrain.beta=0.1")
    target_ids = tok(TARGET, add_special_tokens=False)["input_ids"]
    assert len(target_ids) <= 16
    _write_target_rewrites(cfg, chunks, target_ids)
    backend = RiggedBackend(TARGET)
    monkeypatch.setattr(pretrain, "open_llm", lambda cfg, role, prov=None: CachedLLM(
        backend, JudgmentCache(tmp_path / "judgments.duckdb")))
    rows = data.read_rows(chunks, "heldout", {}, data.CHUNK_COLUMNS).take(range(2))
    rows += data.read_rows(chunks, "train", {}, data.CHUNK_COLUMNS).take(range(2))
    prefixes = [data.truncate_prefix(r["prefix_ids"], 32) for r in rows]
    before = _target_logprob(base, tok, prefixes, target_ids)

    final = pretrain.train(cfg, chunks)
    metrics = read_metrics(final)
    assert backend.seen > 0
    assert [m["step"] for m in metrics] == list(range(1, 6))
    assert all(m["chosen_share_rewrite"] == 1.0 for m in metrics)  # the judge really is rigged
    assert all(m["rejected_share_rewrite"] == 0.0 for m in metrics)
    trained = AutoModelForCausalLM.from_pretrained(checkpoint.local_copy(final.uri, {})).eval()
    after = _target_logprob(trained, tok, prefixes, target_ids)
    print(f"log p(target | prefix): before {before:.2f}, after {after:.2f}")
    assert after - before > 5.0, (before, after)  # nats over ~11 tokens, also on held-out prefixes
    assert metrics[-1]["dpo_margin"] > 0 and metrics[-1]["reward_accuracy"] == 1.0


@pytest.mark.slow
def test_kill_and_resume_dpo(chunks, tmp_path):
    from sip_core.infra import artifacts
    from sip_core.recipes import pretrain

    version = artifacts.code_version()  # part of the run folder's key
    sets = ("pretrain.steps=6", "pretrain.checkpoint_every=2", "pretrain.suffix_tokens=8", "pretrain.lr=1e-4")
    cmd = [sys.executable, "-m", "sip_core.recipes.pretrain", *cli_args(tmp_path / "run", chunks.uri, *sets)]
    log = open(tmp_path / "first.stderr", "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env=env_vars())
    first = []
    try:
        for line in proc.stdout:
            if line.startswith("{"):
                first.append(json.loads(line))
            # step 5 was judged (and cached) after the step-4 checkpoint: kill before it is saved
            if first and first[-1].get("step") == 5 and "event" not in first[-1]:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.stderr").read_text()[-2000:]
    assert {"event": "checkpoint", "step": 4} in [{k: r.get(k) for k in ("event", "step")} for r in first]
    assert not any(r.get("event") == "done" for r in first)

    second = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env_vars(), timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    out = [json.loads(line) for line in second.stdout.splitlines() if line.startswith("{")]
    resumed = [r for r in out if r.get("event") == "resumed"]
    versions = {json.loads(m.read_text())["code_version"]
                for m in (tmp_path / "run" / "train").glob("*/step-*/_manifest.json")}
    if not resumed and (artifacts.code_version() != version or len(versions) > 1):
        pytest.skip("the checkout changed (commit or edit) between the two runs: a new run folder, by design")
    assert len(resumed) == 1 and resumed[0]["step"] == 4 and resumed[0]["from"].endswith("step-000004")
    assert [r["step"] for r in out if "event" not in r] == [5, 6]
    replayed = next(r for r in out if r.get("step") == 5 and "event" not in r)
    assert replayed["judge_calls"] == 0 and replayed["judge_cache_hits"] > 0  # step 5 was judged before the kill
    done = next(r for r in out if r.get("event") == "done")
    final = artifacts.load_manifest(done["final"], {})
    metrics = read_metrics(final)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    killed = {r["step"]: r for r in first if "event" not in r}
    for m in metrics[:4]:  # steps 1-4 came back from the checkpoint
        assert m["loss"] == pytest.approx(killed[m["step"]]["loss"])
    assert replayed["loss"] == pytest.approx(killed[5]["loss"], rel=1e-4, abs=1e-6)

    clean = read_metrics(pretrain.train(tiny_cfg(tmp_path / "clean", *sets), chunks))
    assert [m["step"] for m in clean] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "dpo_margin", "chosen_share_original", "chosen_share_rollout"):
        got = [m[key] for m in metrics]
        want = [m[key] for m in clean]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6, nan_ok=True), key
    assert metrics[-1]["heldout_nll"] == pytest.approx(clean[-1]["heldout_nll"], rel=1e-4)


@pytest.mark.slow
def test_ddp_two_ranks_ntp(chunks, tmp_path):
    """torchrun with 2 CPU ranks (gloo): each rank takes its half of the global batch and DDP
    averages the gradients, so the run matches one process with the whole batch (the NTP loss
    is a mean over equally long suffixes), step for step."""
    from sip_core.infra import artifacts
    from sip_core.recipes import pretrain
    from sip_core.training import checkpoint

    sets = ("pretrain.objective=ntp", "pretrain.steps=2", "pretrain.checkpoint_every=1", "pretrain.lr=1e-4")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "sip_core.recipes.pretrain", *cli_args(tmp_path / "ddp", chunks.uri, *sets)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env_vars(), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    done = [r for r in out if r.get("event") == "done"]
    assert len(done) == 1  # only rank 0 logs
    final = artifacts.load_manifest(done[0]["final"], {})
    run_dir = final.uri.rsplit("/", 1)[0]
    state = checkpoint.load_state(checkpoint.step_dir(run_dir, 1), {})
    assert len(state["rng"]) == 2  # both ranks' RNG states were gathered into the checkpoint
    ddp = read_metrics(final)
    assert [m["step"] for m in ddp] == [1, 2]

    whole = read_metrics(pretrain.train(tiny_cfg(tmp_path / "one", *sets, "pretrain.batch_size=4"), chunks))
    half = read_metrics(pretrain.train(tiny_cfg(tmp_path / "half", *sets), chunks))
    assert [m["loss"] for m in ddp] == pytest.approx([m["loss"] for m in whole], rel=1e-4)
    assert ddp[0]["loss"] != pytest.approx(half[0]["loss"], rel=1e-4)  # rank 1's rows count too


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("args, named", [([], "--chunks"), (["--chunks", "/nonexistent/chunks"], "--chunks")])
def test_recipe_input_missing_or_wrong_is_one_line_exit_2(tmp_path, args, named):
    """Recipes never make their inputs: a missing or uncommitted --chunks is bad input."""
    cmd = [sys.executable, "-m", "sip_core.recipes.pretrain", "--config", str(ROOT / "configs" / "tiny.yaml"),
           "--set", f"run.root={tmp_path}", *args]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env_vars(), timeout=300)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "prepare").exists()  # nothing was prepared on the side
