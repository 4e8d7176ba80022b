"""Shared-prefix DPO and rollouts compute the same numbers as the two-sequence / one-prefill-per-
rollout paths they replace: log-probs, the DPO loss and every parameter's gradient on the real
bundled SmolLM2 (fp32), and identical samples for the same seeds on a tiny random Llama.
No timing here: the speed is measured in benchmarks/bench_train.py."""

from __future__ import annotations

import pytest
import torch

from conftest import POLICY


@pytest.fixture(scope="module")
def smollm():
    """Two real SmolLM2 copies in fp32, as training loads them: policy (trainable) and reference."""
    from sip_core.infra.models import load_causal_lm

    policy, tok = load_causal_lm(POLICY, "cpu", trainable=True)
    reference, _ = load_causal_lm(POLICY, "cpu")
    policy.eval()  # no dropout in SmolLM2; eval keeps the comparison deterministic regardless
    return policy, reference, tok


def uneven_pairs(tok):
    """Prompts, chosen and rejected of different lengths (padding on every side gets exercised),
    one empty-length mismatch: a chosen completion longer than any rejected one and vice versa."""
    texts = ["The river ran past the old mill and", "Seven", "In the quiet market, a paper seller counted"]
    chosen = [" the stones were green.", " clouds drifted over the bay at noon, slowly", " coins"]
    rejected = [" blue", " and", " his pages one by one before the rain came down hard"]
    enc = lambda xs: [tok(x, add_special_tokens=False)["input_ids"] for x in xs]  # noqa: E731
    return enc(texts), enc(chosen), enc(rejected)


def test_pack_layout_masks_chosen_from_rejected():
    from sip_core.training.logprobs import pack_shared_prefix

    batch = pack_shared_prefix([[5, 6, 7], [8]], [[1, 2], [3]], [[4], [9, 10, 11]], pad_id=0)
    # row 1: [pad pad 8 | 3 pad | 9 10 11]; prompt ends at column 3, rejected starts at 5
    assert batch.input_ids[1].tolist() == [0, 0, 8, 3, 0, 9, 10, 11]
    assert batch.position_ids[1].tolist() == [0, 0, 0, 1, 0, 1, 2, 3]
    allowed = batch.attention[1, 0]
    assert allowed[5, 2] and not allowed[5, 3]  # a rejected token sees the prompt, never the chosen
    assert allowed[3, 2] and not allowed[3, 5]  # a chosen token sees the prompt, never a later column
    assert not allowed[7, 0] and allowed[0, 0]  # padding keys are masked; a padding query sees itself
    assert batch.keep.tolist() == [2, 3, 2, 5, 6] and batch.n_chosen == 2
    assert batch.target_mask[1].tolist() == [True, False, True, True, True]


def test_shared_prefix_logprobs_loss_and_grads_equal_two_sequences(smollm):
    from sip_core.training.objectives import Pairs, dpo

    policy, reference, tok = smollm
    pairs = Pairs(*uneven_pairs(tok))
    results = {}
    for shared in (True, False):
        policy.zero_grad(set_to_none=True)
        loss, extra = dpo(policy, pairs, tok.pad_token_id, "cpu", reference=reference, beta=0.1,
                          shared_prefix=shared)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        results[shared] = loss.detach(), extra, grads
    (loss_s, extra_s, grads_s), (loss_t, extra_t, grads_t) = results[True], results[False]
    assert loss_s.item() == pytest.approx(loss_t.item(), abs=1e-5)
    assert extra_s["dpo_margin"] == pytest.approx(extra_t["dpo_margin"], abs=1e-5)
    assert grads_s.keys() == grads_t.keys() and len(grads_s) > 10
    for name, g in grads_t.items():
        scale = g.abs().max().item()
        assert (grads_s[name] - g).abs().max().item() <= 1e-3 * scale + 1e-7, name


def test_shared_prefix_logprobs_equal_two_sequences_per_completion(smollm):
    """The log-probs themselves agree too, per completion, chosen and rejected (the untrained
    policy; the test after this one moves it away from the reference)."""
    from sip_core.training.logprobs import pair_logprobs, shared_prefix_supported

    policy, _, tok = smollm
    prompts, chosen, rejected = uneven_pairs(tok)
    assert shared_prefix_supported(policy, prompts)
    with torch.no_grad():
        shared = pair_logprobs(policy, prompts, chosen, rejected, tok.pad_token_id)
        two = pair_logprobs(policy, prompts, chosen, rejected, tok.pad_token_id, shared_prefix=False)
    for a, b in zip(shared, two):
        assert torch.allclose(a, b, atol=2e-4, rtol=1e-5), (a, b)
        assert (a < 0).all()


@pytest.fixture(scope="module")
def perturbed_policy(smollm):
    """A copy of the policy whose weights differ from the reference's: every tensor moved by fixed-
    seed Gaussian noise of 2% of its own spread, so the policy/reference log-ratios are not zero."""
    import copy

    policy, _, _ = smollm
    moved = copy.deepcopy(policy)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for param in moved.parameters():
            spread = param.std() if param.numel() > 1 else param.abs()
            param.add_(torch.randn(param.shape, generator=gen) * 0.02 * spread)
    return moved.eval()


def test_shared_prefix_equals_two_sequences_when_policy_differs_from_reference(smollm, perturbed_policy):
    """With policy != reference the DPO loss is not log 2 by construction: the shared-prefix path's
    log-probs, loss, margin and every gradient must still equal the two-sequence path's."""
    import math

    from sip_core.training.logprobs import pair_logprobs, shared_prefix_supported
    from sip_core.training.objectives import Pairs, dpo

    _, reference, tok = smollm
    policy = perturbed_policy
    prompts, chosen, rejected = uneven_pairs(tok)
    assert shared_prefix_supported(policy, prompts)
    with torch.no_grad():
        shared = pair_logprobs(policy, prompts, chosen, rejected, tok.pad_token_id)
        two = pair_logprobs(policy, prompts, chosen, rejected, tok.pad_token_id, shared_prefix=False)
        ref = pair_logprobs(reference, prompts, chosen, rejected, tok.pad_token_id, shared_prefix=False)
    for a, b, r in zip(shared, two, ref):
        assert torch.allclose(a, b, atol=5e-4, rtol=1e-5), (a, b)
        assert (a - r).abs().max().item() > 0.1, (a, r)  # the perturbation moved the log-probs

    pairs = Pairs(prompts, chosen, rejected)
    results = {}
    for flag in (True, False):
        policy.zero_grad(set_to_none=True)
        loss, extra = dpo(policy, pairs, tok.pad_token_id, "cpu", reference=reference, beta=0.1, shared_prefix=flag)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        results[flag] = loss.item(), extra, grads
    policy.zero_grad(set_to_none=True)
    (loss_s, extra_s, grads_s), (loss_t, extra_t, grads_t) = results[True], results[False]
    assert abs(loss_t - math.log(2)) > 1e-3 and abs(extra_t["dpo_margin"]) > 1e-3  # a real gap to match
    assert loss_s == pytest.approx(loss_t, abs=1e-4)
    assert extra_s["dpo_margin"] == pytest.approx(extra_t["dpo_margin"], abs=1e-4)
    assert extra_s["reward_accuracy"] == extra_t["reward_accuracy"]
    assert grads_s.keys() == grads_t.keys() and len(grads_s) > 10
    for name, g in grads_t.items():
        scale = g.abs().max().item()
        assert scale > 0, name
        assert (grads_s[name] - g).abs().max().item() <= 1e-3 * scale + 1e-7, name


def test_eager_attention_takes_the_same_path():
    """The eager kernel adds the mask to the scores: the boolean mask becomes an additive one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sip_core.training.logprobs import pair_logprobs

    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         initializer_range=0.5, attn_implementation="eager")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    prompts, chosen, rejected = [[3, 4, 5, 6], [7]], [[8, 9], [10, 11, 12]], [[13], [14, 15]]
    with torch.no_grad():
        shared = pair_logprobs(model, prompts, chosen, rejected, 0)
        two = pair_logprobs(model, prompts, chosen, rejected, 0, shared_prefix=False)
    for a, b in zip(shared, two):
        assert torch.allclose(a, b, atol=1e-5), (a, b)


def test_empty_prompt_falls_back_to_two_sequences(smollm):
    from sip_core.training.logprobs import shared_prefix_supported

    policy, _, _ = smollm
    assert not shared_prefix_supported(policy, [[1, 2], []])


# --------------------------------------------------------------------------- rollouts


class _Tok:
    pad_token_id, eos_token_id = 0, 1


def _engine(model, share: bool, batch_size: int):
    from sip_core.training.rollout import HFRolloutEngine

    return HFRolloutEngine(model, _Tok(), "cpu", batch_size=batch_size, decode_threads=None, share_prefill=share)


@pytest.mark.parametrize("batch_size", [4, 6])
def test_shared_prefill_rollouts_equal_per_row_prefill(batch_size):
    """Same seeds, same samples: the K rollouts of each prefix prefilled once (cache repeated per
    row) vs once per row. Batches of 4 split a prefix's K=3 rollouts across batches and mix
    prefixes of different lengths (left padding); sampling at temperature 1 and 0.7/top-p, greedy."""
    from sip_core.training.rollout import SamplingSpec

    model = _tiny(init=0.3)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    for spec in (SamplingSpec(8, 1.0, 1.0, True, seed=3), SamplingSpec(8, 0.7, 0.9, True, seed=4),
                 SamplingSpec(6, 0.0, 1.0, True, seed=0)):
        shared = _engine(model, True, batch_size).generate(prompts, 3, spec)
        per_row = _engine(model, False, batch_size).generate(prompts, 3, spec)
        assert shared == per_row
        assert all(len(c) == spec.max_new_tokens for outs in shared for c in outs)
    sampled = _engine(model, True, batch_size).generate(prompts, 3, SamplingSpec(8, 1.0, 1.0, True, seed=3))
    assert len({tuple(c) for c in sampled[0]}) > 1  # the K rollouts of a prefix differ from each other


def test_shared_prefill_runs_once_per_distinct_prompt():
    """The prefill forward sees each distinct prompt once (minus its last token), not K times."""
    from sip_core.training.rollout import SamplingSpec

    model = _tiny(init=0.3)
    seen = []
    hook = model.model.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["input_ids"].shape),
                                             with_kwargs=True)
    try:
        _engine(model, True, 8).generate([[5, 6, 7, 8], [9, 10, 11, 12]], 4, SamplingSpec(3, 1.0, 1.0, True, 1))
    finally:
        hook.remove()
    assert seen[0] == (2, 3)  # two distinct prompts, prefilled once each
    assert all(shape[0] == 8 and shape[1] == 1 for shape in seen[1:])  # then 8 rows decode one token a step


def _tiny(init: float):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         initializer_range=init)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_shared_prefill_rollouts_equal_on_smollm(smollm):
    """On the real model too (fp32): one prefill repeated for K=4 rows samples what 4 prefills do.
    Float sums over other GEMM shapes may differ in the last bits; a sample would only change if
    a uniform draw fell within that of a CDF boundary."""
    from sip_core.training.rollout import HFRolloutEngine, SamplingSpec

    _, reference, tok = smollm
    prompt = tok("The old lighthouse keeper climbed the stairs every evening, and", add_special_tokens=False)
    spec = SamplingSpec(6, 1.0, 1.0, True, seed=11)
    runs = [HFRolloutEngine(reference, tok, "cpu", batch_size=4, decode_threads=None, share_prefill=share)
            .generate([prompt["input_ids"]], 4, spec) for share in (True, False)]
    assert runs[0] == runs[1]
