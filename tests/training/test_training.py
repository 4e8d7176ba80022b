"""Training library and recipes (issue 4): losses against hand values and TRL, log-probs against a
per-token computation, batched vs unbatched generation, a rigged judge that must move the policy,
kill -9 and resume, DDP on CPU, checkpoints with lineage, and the SFT/RLMT recipes end to end.

Everything runs on the CPU in fp32 on tiny settings (60 documents, 32-token prefixes, 16-token
suffixes); each test has its own run root, and they share one chunk artifact built once.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import POLICY
from sip_core.llm.types import LLMBackend, LLMResult

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "tiny.yaml")
TARGET = " Purple elephants dance quietly under the silver moon."

DATA = ["data.max_docs=60", "data.prefix_tokens=64", "data.suffix_tokens=16", "data.min_prefix_tokens=16"]
TRAIN = ["device=cpu", "precision=fp32", "heldout_rows=2", "max_prefix_tokens=32"]


def overrides(root, *extra: str) -> list[str]:
    sections = [f"{s}.{kv}" for s in ("pretrain", "sft", "rlmt") for kv in TRAIN if not (
        s == "sft" and kv.startswith("max_prefix"))]
    return [f"run.root={root}", *DATA, "judge.model=none", "teacher.model=none", "pretrain.k_rollouts=1",
            "pretrain.batch_size=2", "pretrain.checkpoint_every=100", "pretrain.eval_every=100", *sections, *extra]


def tiny_cfg(root, *extra: str):
    from sip_core.config import load_config

    return load_config(CONFIG, overrides(root, *extra))


def cli_args(root, chunks_uri: str, *extra: str) -> list[str]:
    args = ["--config", CONFIG, "--chunks", chunks_uri]
    for kv in overrides(root, *extra):
        args += ["--set", kv]
    return args


def env_vars() -> dict:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


def read_metrics(final_manifest) -> list[dict]:
    return pq.read_table(final_manifest.stats["metrics_uri"]).to_pylist()


@pytest.fixture(scope="session")
def chunks(tmp_path_factory):
    """One small chunk artifact (bundled C4), shared by every test that trains."""
    from sip_core.infra.artifacts import Provenance
    from sip_core.recipes._cli import chunk_manifest

    cfg = tiny_cfg(tmp_path_factory.mktemp("chunks"))
    manifest = chunk_manifest(cfg, None, Provenance())
    assert manifest.stats.get("partitions", {}) or manifest.files
    return manifest


@pytest.fixture(scope="session")
def policy():
    """The real SmolLM2 policy in fp32, eval mode."""
    from sip_core.training import runtime

    rt = runtime.Runtime(torch.device("cpu"), None)
    model, tok = runtime.load_model(POLICY, rt, trainable=False)
    model.eval()
    return model, tok


def tiny_llama(vocab: int, seed: int, init: float = 0.02):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         initializer_range=init)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


# --------------------------------------------------------------------------- losses


def test_dpo_loss_hand_values():
    from sip_core.training.losses import dpo_loss

    pc, pr = torch.tensor([-0.5, -10.0, -1.0]), torch.tensor([-0.1, -30.0, -21.0])
    rc, rr = torch.tensor([-0.5, -10.1, -0.1]), torch.tensor([-0.1, -20.1, -0.1])
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.1)
    # -log sigmoid(0.1 * ((pc - rc) - (pr - rr))): logits 0, 10.0, 20.0
    assert torch.allclose(losses, torch.tensor([0.693147, 0.313262, 0.126928]), atol=1e-6)
    assert torch.allclose(chosen, 0.1 * (pc - rc)) and torch.allclose(rejected, 0.1 * (pr - rr))


def test_dpo_loss_equals_trl(tokenizer, tmp_path):
    """Our log-probs + sigmoid DPO give TRL's DPOTrainer loss on the same model, reference and pairs.
    TRL 1.16 has no standalone loss: the trainer tokenizes text pairs (adding EOS), collates them,
    and computes the loss in `compute_loss`; we feed its own token ids to our functions."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from sip_core.training.logprobs import completion_logprobs
    from sip_core.training.losses import dpo_loss

    # A large init spread makes policy and reference disagree, so the loss is far from log 2.
    model, ref = tiny_llama(len(tokenizer), 0, init=0.5), tiny_llama(len(tokenizer), 1, init=0.5)
    words = ["alpha", "river", "stone", "quiet", "blue", "seven", "cloud", "market", "paper", "green"]
    g = torch.Generator().manual_seed(2)

    def phrase(lo, hi):
        n = int(torch.randint(lo, hi, (1,), generator=g))
        return " ".join(words[int(i)] for i in torch.randint(0, len(words), (n,), generator=g))

    pairs = [{"prompt": phrase(2, 8), "chosen": " " + phrase(1, 6), "rejected": " " + phrase(1, 6)} for _ in range(4)]
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=["sigmoid"], report_to=[], use_cpu=True,
                     per_device_train_batch_size=4)
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(pairs),
                         processing_class=tokenizer)
    rows = [trainer.train_dataset[i] for i in range(len(pairs))]
    batch = trainer.data_collator(rows)
    assert len({len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in rows}) > 1  # padding is exercised
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, batch))
        prompts = [r["prompt_ids"] for r in rows]
        pad = tokenizer.pad_token_id

        def logp(m, key):
            return completion_logprobs(m, prompts, [r[key] for r in rows], pad)[0]

        ours = float(dpo_loss(logp(model, "chosen_ids"), logp(model, "rejected_ids"), logp(ref, "chosen_ids"),
                              logp(ref, "rejected_ids"), 0.1)[0].mean())
    assert abs(ours - math.log(2)) > 1e-3, "degenerate case: policy and reference agree"
    assert ours == pytest.approx(trl_loss, rel=1e-5)


def test_group_advantages_center_without_std():
    from sip_core.training.losses import group_advantages

    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    adv = group_advantages(rewards)
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.25, 0.25, 0.25, -0.75], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(adv, expected)  # std normalisation would give +-1 and 0.577/-1.732
    assert torch.allclose(adv.mean(1), torch.zeros(3))


def test_drgrpo_loss_constant_normalisation():
    from sip_core.training.losses import drgrpo_loss

    per_token = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    # -(1 * (-3) + (-1) * (-0.5)) / (norm_tokens 4 * 2 samples) = 2.5 / 8
    loss = drgrpo_loss(per_token, mask, adv, norm_tokens=4)
    assert float(loss) == pytest.approx(0.3125, abs=1e-7)
    # Twice the padding (masked columns of junk) changes nothing: no per-sample length division.
    padded = torch.cat([per_token, torch.full((2, 3), -5.0)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 3)], dim=1)
    assert float(drgrpo_loss(padded, padded_mask, adv, norm_tokens=4)) == pytest.approx(0.3125, abs=1e-7)
    # Per-sample length normalisation would have given -(1 * -1.5 + -1 * -0.5) / 2 = 0.5.
    assert float(loss) != pytest.approx(0.5)
    # The normaliser is the constant budget: doubling it halves the loss.
    assert float(drgrpo_loss(per_token, mask, adv, norm_tokens=8)) == pytest.approx(0.3125 / 2, abs=1e-7)


# --------------------------------------------------------------------------- log-probs and generation


def test_completion_logprobs_match_per_prefix_forward(policy):
    from sip_core.training.logprobs import completion_logprobs

    model, tok = policy
    texts = [("The cat sat on", " the mat and purred."), ("In 1969, the first humans", " landed"),
             ("Water boils at one hundred degrees Celsius at sea", " level, but lower on a mountain top.")]
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p, _ in texts]
    completions = [tok(c, add_special_tokens=False)["input_ids"] for _, c in texts]
    assert len({len(p) + len(c) for p, c in zip(prompts, completions)}) == 3  # right padding in play
    with torch.no_grad():
        summed, per_token, mask = completion_logprobs(model, prompts, completions, tok.pad_token_id)
        for i, (p, c) in enumerate(zip(prompts, completions)):
            direct = []
            for t in range(len(c)):  # one forward per prefix, no padding anywhere
                ids = torch.tensor([p + c[:t]])
                logits = model(input_ids=ids).logits[0, -1].float()
                direct.append(float(torch.log_softmax(logits, -1)[c[t]]))
            got = per_token[i][mask[i]].tolist()
            assert len(got) == len(c)
            assert got == pytest.approx(direct, abs=1e-4)
            assert float(summed[i]) == pytest.approx(sum(direct), abs=1e-3)
        # a row alone (no padding at all) gives the same values as inside the padded batch
        alone, _, _ = completion_logprobs(model, prompts[1:2], completions[1:2], tok.pad_token_id)
        assert float(alone[0]) == pytest.approx(float(summed[1]), abs=1e-4)


def test_batched_generation_matches_unbatched_greedy(policy):
    from sip_core.training.rollout import HFRolloutEngine, SamplingSpec

    model, tok = policy
    texts = ["Hello", "The weather today is", "Once upon a time, in a small village by the sea, there",
             "Python is a programming language that"]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert len({len(p) for p in prompts}) == 4  # left padding in play
    spec = SamplingSpec(max_new_tokens=16, temperature=0.0, exact_length=True)
    one = HFRolloutEngine(model, tok, "cpu", batch_size=1).generate(prompts, 1, spec)
    four = HFRolloutEngine(model, tok, "cpu", batch_size=4).generate(prompts, 1, spec)
    assert all(len(g[0]) == 16 for g in one)
    assert one == four


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_and_lineage(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from sip_core.infra import artifacts
    from sip_core.infra.run_context import RunContext
    from sip_core.training import checkpoint

    cfg = tiny_cfg(tmp_path / "run")
    env = RunContext(cfg)
    model = tiny_llama(len(tokenizer), 3)
    parent = artifacts.config_manifest("test-parent", {"x": 1})
    env.lineage().record([parent])  # recipes record their inputs; save records the checkpoint + edges
    run_dir = str(tmp_path / "run" / "train" / "r")
    state = {"step": 2, "metrics": [{"step": 1}, {"step": 2}]}
    m = checkpoint.save(checkpoint.step_dir(run_dir, 2), model, tokenizer, state, env.context({"c": 1}, [parent]),
                        {"step": 2})
    assert m.parents == [parent.artifact_id] and m.kind == "checkpoint"
    loaded = AutoModelForCausalLM.from_pretrained(checkpoint.local_copy(m.uri, {}))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert checkpoint.load_state(m.uri, {})["metrics"] == state["metrics"]
    ancestry = env.lineage().ancestry(m.uri)
    assert {r["manifest"]["artifact_id"] for r in ancestry} >= {m.artifact_id, parent.artifact_id}
    # an interrupted save (no manifest) is not a checkpoint; a re-save replaces the folder whole
    half = Path(checkpoint.step_dir(run_dir, 4))
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")
    assert checkpoint.committed_steps(run_dir, {}) == [2]
    checkpoint.save(str(half), model, tokenizer, None, env.context({"c": 1}, [parent]))
    assert checkpoint.committed_steps(run_dir, {}) == [2, 4]
    checkpoint.prune(run_dir, 1, {})
    assert checkpoint.committed_steps(run_dir, {}) == [4]


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
    from sip_core.infra import artifacts, store
    from sip_core.infra.artifacts import DatasetWriter
    from sip_core.infra.run_context import RunContext
    from sip_core.augment.rewrites import REWRITE_SCHEMA

    env = RunContext(cfg)
    rows = pa.concat_tables([store.read_parquet(f, {}) for f in artifacts.shard_uris(chunks, "train")]).to_pylist()
    n = len(rows)
    cols = dict(chunk_id=[r["chunk_id"] for r in rows], doc_id=[r["doc_id"] for r in rows],
                filter_label=[r["filter_label"] for r in rows], suffix_text=[r["suffix_text"] for r in rows],
                rewrite_text=[TARGET] * n, rewrite_ids=[target_ids] * n, token_overlap=[0.0] * n,
                is_copy=[False] * n, status=["ok"] * n, error=[None] * n, judgment_key=["k"] * n,
                prompt=["rewrite@test"] * n, model_id=["rigged"] * n)
    uri = store.join(str(cfg.run.root), "rewrites", "rigged", "batch-0000")
    with DatasetWriter(uri, env.context({"test": "rigged"}, [chunks]), schema=REWRITE_SCHEMA) as writer:
        writer.write(pa.Table.from_pydict(cols, schema=REWRITE_SCHEMA))
        writer.commit({})


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


# --------------------------------------------------------------------------- kill -9 and resume


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


# --------------------------------------------------------------------------- DDP


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


# --------------------------------------------------------------------------- SFT and RLMT


def test_sft_and_rlmt_recipes_run(chunks, tmp_path):
    from sip_core.llm.factory import open_llm
    from sip_core.infra.run_context import RunContext
    from sip_core.recipes import rlmt, sft
    from sip_core.augment.thought_insertion import insert_thoughts

    cfg = tiny_cfg(tmp_path / "run", "teacher.backend=proxy", "sft.steps=2", "sft.batch_size=1",
                   "sft.max_tokens=64", "sft.heldout_rows=1", "rlmt.steps=2", "rlmt.batch_size=1",
                   "rlmt.group_size=2", "rlmt.thought_tokens=8", "rlmt.predict_tokens=8", "rlmt.rollout_batch=4")
    thoughts = insert_thoughts(RunContext(cfg), chunks, open_llm(cfg, "teacher"), limit=16)
    assert thoughts.stats["kept"] > 0 and thoughts.stats["halves"]["sft"] > 0
    final = sft.train(cfg, thoughts)
    metrics = read_metrics(final)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert math.isfinite(m["thought_nll"]) and math.isfinite(m["text_nll"]) and m["thought_nll"] > 0
    assert "before_heldout_thought_nll" in final.stats and "after_heldout_text_nll" in final.stats

    final = rlmt.train(cfg, chunks, thoughts)
    metrics = read_metrics(final)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert 0.0 <= m["reward_mean"] <= 1.0
        assert 0 <= m["no_signal_groups"] <= m["groups"] == 1
        assert m["judge_calls"] >= 0
        # budget forcing: every sample reaches a prediction, so none is a format failure
        assert m["format_failures"] == 0 and 0 <= m["forced_closes"] <= 2


def test_think_then_predict_forces_close_and_masks_it(tokenizer):
    """A thought the policy closes is cut at `</think>`; an unclosed one gets the tag from the
    sampler, marked forced, and `unmask_forced` drops exactly those tokens from the loss mask."""
    from sip_core.recipes.rlmt import unmask_forced
    from sip_core.training.think_then_predict import THINK_CLOSE, think_then_predict
    from sip_core.training.logprobs import pack

    enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    closed, rambling, prediction = enc(" short.</think> tail tail"), enc(" on and on and on"), enc(" The end")

    class Scripted:  # phase 1 answers the thoughts in order, phase 2 the prediction
        def __init__(self):
            self.calls = []

        def generate(self, prompts, n, spec):
            self.calls.append(([list(p) for p in prompts], spec.max_new_tokens))
            if len(self.calls) == 1:
                return [[closed, rambling]]
            return [[prediction] for _ in prompts]

    prompt = enc("Some text<think>")
    engine = Scripted()
    [[a, b]] = think_then_predict(engine, tokenizer, [prompt], 2, 8, 4, 1.0, 1.0, seed=0)
    assert [c[1] for c in engine.calls] == [8, 4]
    assert a.forced is None and THINK_CLOSE in tokenizer.decode(a.ids) and "tail" not in tokenizer.decode(a.ids)
    assert a.prediction_ids == prediction and a.ids[-len(prediction):] == prediction
    start, end = b.forced
    assert start == len(rambling) and tokenizer.decode(b.ids[start:end]) == THINK_CLOSE
    assert engine.calls[1][0][1] == prompt + rambling + enc(THINK_CLOSE)  # the policy predicts after the tag

    _, _, loss = pack([prompt, prompt], [a.ids, b.ids], tokenizer.pad_token_id)
    mask = unmask_forced(loss[:, 1:], [prompt, prompt], [a, b])
    assert torch.equal(mask[0], loss[0, 1:])
    dropped = (loss[1, 1:] & ~mask[1]).nonzero().flatten().tolist()
    assert dropped == [len(prompt) + j - 1 for j in range(start, end)]  # column j scores token j + 1

    engine = Scripted()
    [[a, b]] = think_then_predict(engine, tokenizer, [prompt], 2, 8, 4, 1.0, 1.0, seed=0, force_close=False)
    assert b.forced is None and b.prediction_ids == [] and a.prediction_ids == prediction


def test_prune_keeps_the_newest_and_zero_keeps_none(tmp_path):
    from sip_core.training import checkpoint

    run = tmp_path / "run"
    for step in (10, 20, 30):
        (run / f"step-{step:06d}").mkdir(parents=True)
        (run / f"step-{step:06d}" / "_manifest.json").write_text("{}")
    (run / "step-000040").mkdir()  # an interrupted save: no manifest, never counted
    checkpoint.prune(str(run), 2, {})
    assert checkpoint.committed_steps(str(run), {}) == [20, 30]
    checkpoint.prune(str(run), 0, {})
    assert checkpoint.committed_steps(str(run), {}) == []
