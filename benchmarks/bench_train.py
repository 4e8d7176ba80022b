"""Training benchmarks, each against a baseline measured in the same run.

1. Our DPO update step (policy + frozen reference forward, sigmoid DPO loss, backward, AdamW)
   vs TRL's DPOTrainer step (`training_step` + the same optimizer) on the same model and pairs.
   Ratio = our seconds / TRL's seconds (target <= 1.0).
2. HF `generate` rollout throughput (our HFRolloutEngine) at batch 1 / 8 / 32, as output tokens
   per second and as a ratio to batch 1; vLLM offline where it is installed.
3. Decode threads: the same generate calls with the engine's default (one torch thread for the
   token-by-token steps after the prompt pass, `models.cpu_decode_threads`) vs torch's own thread
   count throughout (`decode_threads=None`), and one prompt forward pass on 1 vs all threads.
   Ratio = tokens/s with the switch / tokens/s without.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_train.py [--steps 5] [--model bundled:smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
import time

import torch

from sip_core.infra.models import autocast_dtype, load_causal_lm, resolve_model
from sip_core.infra.paths import default_data_dir
from sip_core.training.logprobs import completion_logprobs
from sip_core.training.losses import dpo_loss
from sip_core.training.rollout import HFRolloutEngine, SamplingSpec


def real_token_rows(tok, n: int, length: int) -> list[list[int]]:
    path = sorted((default_data_dir() / "corpus" / "c4_sample").glob("*.json.gz"))[0]
    rows = []
    with gzip.open(path, "rt") as f:
        for line in f:
            ids = tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
            if len(ids) >= length:
                rows.append(ids[:length])
            if len(rows) == n:
                return rows
    raise SystemExit("not enough long documents in the bundled sample")


def timed(fn, steps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_dpo(model_ref: str, steps: int, pairs: int, prompt_len: int, completion_len: int) -> None:
    from trl import DPOConfig, DPOTrainer
    from datasets import Dataset

    policy, tok = load_causal_lm(model_ref, "cpu", trainable=True)
    reference, _ = load_causal_lm(model_ref, "cpu")
    rows = real_token_rows(tok, 2 * pairs, prompt_len + completion_len)
    # TRL tokenizes text pairs itself (it has no pre-tokenized path); both sides then train on the
    # token ids TRL produced, so the work is the same.
    texts = [{"prompt": tok.decode(a[:prompt_len]), "chosen": tok.decode(a[prompt_len:]),
              "rejected": tok.decode(b[prompt_len:])} for a, b in zip(rows[:pairs], rows[pairs:])]
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, beta=0.1, loss_type=["sigmoid"], per_device_train_batch_size=pairs,
                         report_to=[], use_cpu=True, learning_rate=1e-7, logging_steps=10**6)
        trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(texts),
                             processing_class=tok)
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop, which we skip
        examples = [trainer.train_dataset[i] for i in range(pairs)]
        batch = trainer.data_collator(examples)
        prompts = [e["prompt_ids"] for e in examples]
        both_completions = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-7)

        def ours():
            both, _, _ = completion_logprobs(policy, prompts * 2, both_completions, tok.pad_token_id)
            with torch.no_grad():
                ref, _, _ = completion_logprobs(reference, prompts * 2, both_completions, tok.pad_token_id)
            loss = dpo_loss(both[:pairs], both[pairs:], ref[:pairs], ref[pairs:], 0.1)[0].mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def trl_step():
            trainer.training_step(trainer.model, batch)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)

        # interleave the two so machine noise hits both alike
        ours_s, trl_s = [], []
        ours()  # warm-up: allocator, optimizer state
        trl_step()
        for _ in range(steps):
            ours_s.append(timed(ours, 1, 0))
            trl_s.append(timed(trl_step, 1, 0))
    o, t = statistics.median(ours_s), statistics.median(trl_s)
    print(f"dpo step  pairs={pairs} prompt={prompt_len} completion={completion_len} steps={steps}: "
          f"ours {o:.3f}s  TRL {t:.3f}s  ratio ours/TRL = {o / t:.2f} (target <= 1.0)")


def bench_generate(model_ref: str, new_tokens: int, prompt_len: int, batches=(1, 8, 32)) -> None:
    model, tok = load_causal_lm(model_ref, "cpu")
    dtype = autocast_dtype("auto", "cpu")
    prompts = real_token_rows(tok, max(batches), prompt_len)
    base = None
    for b in batches:
        engine = HFRolloutEngine(model, tok, "cpu", batch_size=b, autocast_dtype=dtype)
        spec = SamplingSpec(new_tokens, 1.0, 1.0, True, 0)
        seconds = timed(lambda: engine.generate(prompts[:b], 1, spec), 1, 1)
        rate = b * new_tokens / seconds
        base = base or rate
        print(f"hf generate batch={b:<3d} {new_tokens} new tokens: {rate:8.1f} tok/s  ({rate / base:.1f}x batch 1)")
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vllm offline: not installed in this environment (GPU clusters: pretrain.rollout_engine=vllm)")
        return
    from sip_core.training.rollout import VLLMRolloutEngine

    engine = VLLMRolloutEngine(resolve_model(model_ref))
    spec = SamplingSpec(new_tokens, 1.0, 1.0, True, 0)
    for b in batches:
        seconds = timed(lambda: engine.generate(prompts[:b], 1, spec), 1, 1)
        print(f"vllm offline batch={b:<3d}: {b * new_tokens / seconds:8.1f} tok/s")
    start = time.perf_counter()
    engine._load(resolve_model(model_ref))
    print(f"vllm weight sync (reload from a checkpoint folder): {time.perf_counter() - start:.1f}s")


def bench_decode_threads(model_ref: str, new_tokens: int, prompt_len: int, batches=(1, 4, 16)) -> None:
    model, tok = load_causal_lm(model_ref, "cpu")
    dtype = autocast_dtype("auto", "cpu")
    prompts = real_token_rows(tok, max(batches), prompt_len)
    spec = SamplingSpec(new_tokens, 1.0, 1.0, True, 0)
    threads = torch.get_num_threads()
    for b in batches:
        rates = {}
        for name, decode in (("all threads", None), ("1-thread decode", 1)):
            engine = HFRolloutEngine(model, tok, "cpu", batch_size=b, autocast_dtype=dtype, decode_threads=decode)
            rates[name] = b * new_tokens / timed(lambda: engine.generate(prompts[:b], 1, spec), 2, 1)
        print(f"generate batch={b:<3d} {threads} threads throughout: {rates['all threads']:7.1f} tok/s; "
              f"1-thread decode: {rates['1-thread decode']:7.1f} tok/s  ratio {rates['1-thread decode'] / rates['all threads']:.2f}")
    batch = torch.tensor(real_token_rows(tok, 8, 400))
    with torch.no_grad():
        for n in sorted({1, threads}):
            torch.set_num_threads(n)
            print(f"prompt pass 8x400 tokens on {n} thread(s): {timed(lambda: model(input_ids=batch), 2, 1):.2f}s")
    torch.set_num_threads(threads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled:smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=96)
    p.add_argument("--completion-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--skip", choices=["dpo", "generate", "threads"], action="append", default=[])
    args = p.parse_args()
    torch.manual_seed(0)
    if "dpo" not in args.skip:
        bench_dpo(args.model, args.steps, args.pairs, args.prompt_len, args.completion_len)
    if "generate" not in args.skip:
        bench_generate(args.model, args.new_tokens, args.prompt_len)
    if "threads" not in args.skip:
        bench_decode_threads(args.model, args.new_tokens, args.prompt_len)


if __name__ == "__main__":
    main()
