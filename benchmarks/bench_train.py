"""Training benchmarks, each against a baseline measured in the same run.

1. Our DPO update step (policy + frozen reference forward, sigmoid DPO loss, backward, AdamW)
   vs TRL's DPOTrainer step (`training_step` + the same optimizer) on the same model and pairs, at
   96:32 and 480:32 prefix:completion tokens. Ratio = our seconds / TRL's seconds (targets
   dpo_step_vs_trl_tiny <= 1.0, dpo_step_vs_trl_long_prefix <= 0.6). Our step with two sequences
   per pair (TRL's layout) is timed alongside.
2. Rollouts: K = 16 rollouts of 32 tokens from one 480-token prefix, our HFRolloutEngine (one
   prefill, K decoded as a batch) vs generate(num_return_sequences=16), tokens/s ratio
   (target rollouts_vs_hf_generate_k16 >= 2.0).
3. (--sections generate) HF `generate` rollout throughput at batch 1 / 8 / 32; vLLM offline
   where it is installed.
4. (--sections threads) Decode threads: the same generate calls with the engine's default (one torch thread for the
   token-by-token steps after the prompt pass, `models.cpu_decode_threads`) vs torch's own thread
   count throughout (`decode_threads=None`), and one prompt forward pass on 1 vs all threads.
   Ratio = tokens/s with the switch / tokens/s without.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_train.py [--rounds 3] [--pairs 2] [--sections dpo,rollouts]

Each target prints `target <name>: <value> (goal <op> <n>) ok|BELOW`; the exit status is 1 if any
is BELOW. Each ratio is the median of per-round ratios, baseline and ours timed back to back.
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


def target(name: str, value: float, op: str, goal: float) -> bool:
    """Print the target line; True when met."""
    ok = value <= goal if op == "<=" else value >= goal
    print(f"target {name}: {value:.2f} (goal {op} {goal}) {'ok' if ok else 'BELOW'}", flush=True)
    return ok


def load_avg() -> str:
    import os

    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def bench_dpo(model_ref: str, rounds: int, pairs: int, prompt_len: int, completion_len: int) -> float:
    """Median over rounds of (our step / TRL's step), each round timing TRL, ours (shared prefix,
    the default) and ours with two sequences per pair back to back."""
    from trl import DPOConfig, DPOTrainer
    from datasets import Dataset

    from sip_core.training.objectives import Pairs, dpo

    policy, tok = load_causal_lm(model_ref, "cpu", trainable=True)
    reference, _ = load_causal_lm(model_ref, "cpu")
    rows = real_token_rows(tok, 2 * pairs, prompt_len + completion_len)
    # TRL tokenizes text pairs itself (it has no pre-tokenized path); both sides then train on the
    # token ids TRL produced, so the work is the same. Both run in fp32 (TRL's CPU default).
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
        data = Pairs([e["prompt_ids"] for e in examples], [e["chosen_ids"] for e in examples],
                     [e["rejected_ids"] for e in examples])
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-7)

        def ours(shared: bool):
            loss, _ = dpo(policy, data, tok.pad_token_id, "cpu", reference=reference, beta=0.1, shared_prefix=shared)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def trl_step():
            trainer.training_step(trainer.model, batch)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)

        ours(True), trl_step()  # warm-up: allocator, optimizer state
        seconds = {"TRL": [], "ours": [], "ours two-sequence": []}
        for _ in range(rounds):  # interleaved so machine noise hits all alike
            seconds["TRL"].append(timed(trl_step, 1, 0))
            seconds["ours"].append(timed(lambda: ours(True), 1, 0))
            seconds["ours two-sequence"].append(timed(lambda: ours(False), 1, 0))
    ratios = [o / t for o, t in zip(seconds["ours"], seconds["TRL"])]
    print(f"dpo step pairs={pairs} prompt={prompt_len} completion={completion_len} rounds={rounds} ({load_avg()}):")
    for name, s in seconds.items():
        print(f"  {name:<18} median {statistics.median(s):7.2f}s  rounds " + " ".join(f"{x:.2f}" for x in s))
    print("  ratio ours/TRL per round " + " ".join(f"{r:.2f}" for r in ratios) + "; two-sequence/TRL " +
          " ".join(f"{o / t:.2f}" for o, t in zip(seconds["ours two-sequence"], seconds["TRL"])))
    return statistics.median(ratios)


def bench_rollouts(model_ref: str, rounds: int, k: int, prompt_len: int, new_tokens: int) -> float:
    """Rollout tokens/s of our engine (one prefill, K decoded as a batch) over transformers'
    generate(num_return_sequences=K) (K prefills), same sampling settings, rounds interleaved."""
    model, tok = load_causal_lm(model_ref, "cpu")
    dtype = autocast_dtype("auto", "cpu")
    prompt = real_token_rows(tok, 1, prompt_len)[0]
    engine = HFRolloutEngine(model, tok, "cpu", batch_size=k, autocast_dtype=dtype)
    spec = SamplingSpec(new_tokens, 1.0, 1.0, True, 0)
    ids = torch.tensor([prompt])

    def hf_generate():
        ctx = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
        with ctx, torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                           num_return_sequences=k, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           pad_token_id=tok.pad_token_id)

    engine.generate([prompt], k, spec)  # warm-up
    rates = {"ours": [], "generate(num_return_sequences)": []}
    for _ in range(rounds):
        rates["generate(num_return_sequences)"].append(k * new_tokens / timed(hf_generate, 1, 0))
        rates["ours"].append(k * new_tokens / timed(lambda: engine.generate([prompt], k, spec), 1, 0))
    ratios = [o / b for o, b in zip(rates["ours"], rates["generate(num_return_sequences)"])]
    # generate() keeps autocast (its faster setting here: its K prefills are big matmuls); our
    # engine decodes a CPU in fp32 (HFRolloutEngine says why).
    print(f"rollouts K={k} x {new_tokens} tokens from one {prompt_len}-token prefix, generate() under autocast "
          f"{dtype}, ours in {engine.autocast_dtype or 'fp32'}, "
          f"rounds={rounds} ({load_avg()}):")
    for name, r in rates.items():
        print(f"  {name:<32} median {statistics.median(r):7.1f} tok/s  rounds " + " ".join(f"{x:.1f}" for x in r))
    print("  ratio per round " + " ".join(f"{r:.2f}" for r in ratios))
    return statistics.median(ratios)


def bench_step_split(model_ref: str, rounds: int, k: int = 2, prompt_len: int = 96, n_new: int = 32) -> None:
    """The tiny config's pretraining step (configs/tiny.yaml: one prefix, K=2 rollouts of 32 tokens,
    96-token prefix, the proxy judge, DPO best vs worst) split into generate / judge / update, before
    (a prefill per rollout, two sequences per DPO pair) and after (shared prefix), interleaved per
    round, each step on a new prefix (the judge's cache would answer a repeated one)."""
    import statistics as st

    from sip_core.config.loading import load_config
    from sip_core.judge.scoring import score_sets
    from sip_core.llm.factory import open_llm
    from sip_core.training.judged_pairs import PairStats, candidates
    from sip_core.training.objectives import dpo

    policy, tok = load_causal_lm(model_ref, "cpu", trainable=True)
    reference, _ = load_causal_lm(model_ref, "cpu")
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-7)
    dtype = autocast_dtype("auto", "cpu")
    with tempfile.TemporaryDirectory() as root:
        cfg = load_config("configs/tiny.yaml", [f"run.root={root}"])
        judge = open_llm(cfg, "judge")
        rows = [{"chunk_id": f"bench-{i}", "prefix_ids": r[:prompt_len], "suffix_ids": r[prompt_len:],
                 "prefix_text": tok.decode(r[:prompt_len]), "suffix_text": tok.decode(r[prompt_len:])}
                for i, r in enumerate(real_token_rows(tok, 2 * rounds + 1, prompt_len + n_new))]
        times = {"before": [], "after": []}

        def step(row, shared: bool) -> dict:
            out, t = {}, time.perf_counter()
            engine = HFRolloutEngine(policy, tok, "cpu", 16, dtype, share_prefill=shared)
            rollouts = engine.generate([row["prefix_ids"]], k, SamplingSpec(n_new, 1.0, 1.0, True, len(out)))
            out["generate"], t = time.perf_counter() - t, time.perf_counter()
            cands = candidates([row], rollouts, {}, n_new, 0, tok, "suffix+rollouts")
            pairs = PairStats().pairs([row["prefix_ids"]], cands, score_sets(judge, cands.sets, cfg.judge))
            out["judge"], t = time.perf_counter() - t, time.perf_counter()
            if pairs:
                with torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False):
                    loss, _ = dpo(policy, pairs, tok.pad_token_id, "cpu", reference=reference, shared_prefix=shared)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            out["update"] = time.perf_counter() - t
            return out

        step(rows[-1], True)  # warm-up
        for i in range(rounds):
            times["before"].append(step(rows[2 * i], False))
            times["after"].append(step(rows[2 * i + 1], True))
    print(f"tiny pretraining step split (K={k}, prefix {prompt_len}, {n_new} new tokens, proxy judge, DPO; "
          f"autocast {dtype}; rounds={rounds}, {load_avg()}), median seconds:")
    for name, runs in times.items():
        parts = {part: st.median(r[part] for r in runs) for part in ("generate", "judge", "update")}
        print(f"  {name:<6} " + "  ".join(f"{part} {v:6.2f}" for part, v in parts.items()) +
              f"  total {sum(parts.values()):6.2f}")


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
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--sections", default="dpo,rollouts",
                   help="comma-separated: dpo, rollouts (the targets), split (the tiny step's generate / judge / "
                        "update before and after), generate, threads (information)")
    args = p.parse_args()
    sections = set(args.sections.split(","))
    torch.manual_seed(0)
    met = []
    if "dpo" in sections:
        met.append(target("dpo_step_vs_trl_tiny", bench_dpo(args.model, args.rounds, args.pairs, 96, 32), "<=", 1.0))
        met.append(target("dpo_step_vs_trl_long_prefix", bench_dpo(args.model, args.rounds, args.pairs, 480, 32),
                          "<=", 0.6))
    if "rollouts" in sections:
        met.append(target("rollouts_vs_hf_generate_k16", bench_rollouts(args.model, args.rounds, 16, 480,
                                                                         args.new_tokens), ">=", 2.0))
    if "split" in sections:
        bench_step_split(args.model, args.rounds)
    if "generate" in sections:
        bench_generate(args.model, args.new_tokens, 96)
    if "threads" in sections:
        bench_decode_threads(args.model, args.new_tokens, 96)
    raise SystemExit(0 if all(met) else 1)


if __name__ == "__main__":
    main()
