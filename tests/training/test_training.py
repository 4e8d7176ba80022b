"""The training library: losses against hand values and TRL, log-probs against a per-token
computation, batched vs unbatched generation, checkpoints with lineage, the thought format's forced
close, the objective table and the judged pairs. The recipes themselves are tested in tests/recipes.

Everything runs on the CPU in fp32.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import POLICY

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "tiny.yaml")


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


def test_signal_groups_skip_failed_judgments_and_equal_rewards():
    from sip_core.training.losses import signal_groups

    rewards = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]  # 4 groups of 2
    failed = [False, False, False, False, True, False, False, False]
    adv, keep, counts = signal_groups(rewards, failed, 2)
    # group 1 is all equal, group 2 has a failed judgment (its 0.0 is no reward), group 3 is all equal
    assert keep == [0] and torch.equal(adv, torch.tensor([0.5, -0.5]))
    assert counts == {"groups": 4, "skipped_invalid_groups": 1, "no_signal_groups": 3}


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

    from sip_core.config import load_config

    env = RunContext(load_config(CONFIG, [f"run.root={tmp_path / 'run'}"]))
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


# --------------------------------------------------------------------------- objectives and judged pairs


def test_objective_table_and_dpo_objective_match_the_loss(tokenizer):
    from sip_core.training.logprobs import completion_logprobs
    from sip_core.training.losses import dpo_loss
    from sip_core.training.objectives import OBJECTIVES, Pairs

    assert set(OBJECTIVES) == {"dpo", "rf_nll", "ntp"}
    assert not OBJECTIVES["ntp"].judged and OBJECTIVES["rf_nll"].judged and OBJECTIVES["dpo"].reference
    assert OBJECTIVES["rf_nll"].loss is OBJECTIVES["ntp"].loss  # one NLL: on the best candidate vs the original
    model, ref = tiny_llama(len(tokenizer), 0, init=0.5), tiny_llama(len(tokenizer), 1, init=0.5)
    pairs = Pairs([[5, 6, 7], [8, 9]], [[10, 11], [12]], [[13], [14, 15, 16]])
    with torch.no_grad():
        loss, extra = OBJECTIVES["dpo"].loss(model, pairs, 0, "cpu", reference=ref, beta=0.1)
        logp = [completion_logprobs(m, pairs.prompts, c, 0)[0] for m in (model, ref)
                for c in (pairs.chosen, pairs.rejected)]
        per_pair, chosen, rejected = dpo_loss(*logp, 0.1)
    assert float(loss) == pytest.approx(float(per_pair.mean()))
    assert extra == pytest.approx({"dpo_margin": float((chosen - rejected).mean()),
                                   "reward_accuracy": float((chosen > rejected).float().mean())})


def test_judged_pairs_best_vs_worst_with_stats(tokenizer):
    from sip_core.judge.scoring import SetScores
    from sip_core.training.judged_pairs import PairStats, candidates

    rows = [{"chunk_id": f"c{i}", "suffix_ids": [1, 2, 3], "prefix_text": "p", "suffix_text": "s"} for i in range(3)]
    cands = candidates(rows, [[[4, 5]], [[6]], [[7]]], {"c0": [8, 9, 10, 11]}, 3, 7, tokenizer)
    assert [[o for o, _ in c] for c in cands.ids] == [["original", "rewrite", "rollout"], ["original", "rollout"],
                                                      ["original", "rollout"]]
    assert cands.ids[0][1][1] == [8, 9, 10] and cands.sets[1].set_id == "c1:7"  # rewrites cut to n tokens
    scored = [SetScores("a", [0, 1, 2], {}, 3, 0, chosen=1, rejected=2), SetScores("b", [1, 1], {}, 1, 0),
              SetScores("c", [0, 1], {}, 1, 0, chosen=0, rejected=1)]
    stats = PairStats()
    pairs = stats.pairs([[100], [101], [102]], cands, scored)
    assert pairs.prompts == [[100], [102]] and pairs.chosen == [[8, 9, 10], [1, 2, 3]]
    assert pairs.rejected == [[4, 5], [7]]
    m = stats.metrics()
    assert (m["sets"], m["skipped_all_equal"], m["invalid_judgments"]) == (3, 1, 0)  # a set with an invalid vote: test_pools_and_schedule
    assert m["chosen_share_rewrite"] == m["chosen_share_original"] == 0.5 and m["rejected_share_rollout"] == 1.0
    assert math.isnan(PairStats().metrics()["chosen_share_original"])  # nothing paired: no share


# --------------------------------------------------------------------------- thought format and pruning


def test_think_then_predict_forces_close_and_masks_it(tokenizer):
    """A thought the policy closes is cut at `</think>`; an unclosed one gets the tag from the
    sampler, marked forced, and `unmask_forced` drops exactly those tokens from the loss mask."""
    from sip_core.llm.thought_markup import THINK_CLOSE
    from sip_core.training.think_then_predict import think_then_predict, unmask_forced
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
