"""Planted results shaped like the tiny lifecycle's (configs/tiny.yaml): the same five arms, the
same evaluation suites at the same sizes (8 prefixes x 2 judge seeds, 8 RTP and 8 XSTest prompts,
12 TruthfulQA items, 2 reasoning problems x 2 samples, 2 reward samples), the four pairwise
comparisons of flows/lifecycle.py (win rate and coherence each), 30 logged steps per stage and a
lineage per arm. Not a real run: the numbers are planted, deterministically."""

from __future__ import annotations

import random

from sip_core.evaluation.factuality import JudgedFactualityResult, TruthfulQAResult
from sip_core.evaluation.nll import NLLResult, ThoughtNLLResult
from sip_core.evaluation.reasoning import ReasoningResult
from sip_core.evaluation.rlmt import CONDITIONS, ProbeResult, RewardGateResult
from sip_core.evaluation.safety import RefusalResult, SafetyResult
from sip_core.evaluation.stats import bounded_mean_interval, clustered_interval, counting, wilson_interval
from sip_core.evaluation.winrate import CoherenceResult, RepetitionStats, WinRateResult
from sip_core.report import Arm, Comparison, RunResults, Stage

BASE, SIP_ARM, NTP_ARM, SIP_ONLY = "base→SFT→RLMT", "base→SIP→SFT→RLMT", "base→NTP", "base→SIP"
PAIRS = [(SIP_ARM, BASE), (SIP_ONLY, NTP_ARM), (SIP_ONLY, "base"), (NTP_ARM, "base")]
PROXY = "proxy:v3:none"


def votes(rng: random.Random, n: int, p: float, per: int) -> list[list[float]]:
    return [[float(rng.random() < p) for _ in range(per)] for _ in range(n)]


def evaluations(rng: random.Random, name: str) -> dict:
    p = rng.uniform(0.3, 0.7)
    return {
        "heldout_nll": NLLResult(n=8, nll=round(rng.uniform(2.4, 2.8), 3), tokens=384),
        "thought_nll": ThoughtNLLResult(n=4, thought_nll=3.1, text_nll=2.7, thought_tokens=120, text_tokens=500),
        "judged_factuality": JudgedFactualityResult(n=8, seeds=[0, 1], judge=PROXY,
                                                    score=clustered_interval(votes(rng, 8, p, 2))),
        "safety_rtp": SafetyResult(n=8, seeds=[0, 1], judge=PROXY, safe_rate=0.75,
                                   unsafe=counting(wilson_interval(rng.randint(0, 4), 8), "prefixes")),
        "xstest": RefusalResult(n=8, over_refusal=wilson_interval(rng.randint(0, 3), 8)),
        "truthfulqa": TruthfulQAResult(n=12, mc1=wilson_interval(rng.randint(2, 6), 12),
                                       mc2=bounded_mean_interval([rng.uniform(0.2, 0.6) for _ in range(12)]),
                                       scorer=f"loglik:{name}"),
        "gsm8k": ReasoningResult(n=2, seeds=[0, 1], k=2, samples=2,
                                 mean_at_k=counting(bounded_mean_interval([0.0, 0.5]), "problems"),
                                 pass_at_k=counting(bounded_mean_interval([0.0, 1.0]), "problems")),
        "math500": ReasoningResult(n=2, seeds=[0, 1], k=2, samples=2,
                                   mean_at_k=counting(bounded_mean_interval([0.0, 0.0]), "problems"),
                                   pass_at_k=counting(bounded_mean_interval([0.0, 0.0]), "problems")),
        "reward_gate": RewardGateResult(n=8, seeds=[0], judge=PROXY, samples_per_prefix=2, passed=rng.random() < .5,
                                        reward=clustered_interval(votes(rng, 8, 0.3, 2), "prefixes")),
        "probe": ProbeResult(n=32, seeds=[0], judge=PROXY, by_condition={
            c: clustered_interval(votes(rng, 8, 0.3, 1), "prefixes") for c in CONDITIONS}),
    }


def stage_rows(rng: random.Random, recipe: str, steps: int = 30) -> list[dict]:
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s, "loss": 2.0 - s / 60 + rng.uniform(-.1, .1), "lr": 1e-6, "grad_norm": rng.uniform(.5, 1.5),
               "updated": True, "elapsed_s": 3.0 * s, "time_generate_s": 1.0, "time_judge_s": .5, "time_update_s": .4}
        if recipe == "pretrain-dpo":
            roll = rng.choice([0.0, 0.5, 1.0])
            row |= {"dpo_margin": rng.uniform(-.1, .3), "reward_accuracy": rng.choice([0.0, 1.0]), "sets": 1,
                    "chosen_share_original": 1 - roll, "chosen_share_rewrite": 0.0, "chosen_share_rollout": roll,
                    "pool_size": 3 + (s % 3 == 0), "pool_rewrites": int(s % 3 == 0), "tie_break_seed": 0,
                    "skipped_all_equal": 0, "judge_calls": 6, "judge_cache_hits": 0, "gen_tokens_per_s": 40.0}
        if recipe == "rlmt":
            row |= {"reward_mean": rng.uniform(0, .5), "no_signal_groups": rng.randint(0, 1), "groups": 1,
                    "format_failures": rng.randint(0, 2), "judge_calls": 4}
        if recipe == "sft":
            row |= {"thought_nll": 3.0 - s / 100, "text_nll": 2.5 - s / 100}
        if s % 10 == 0 and recipe in ("pretrain-dpo", "pretrain-ntp"):
            row["heldout_nll"] = 2.6 + rng.uniform(-.05, .05)
        rows.append(row)
    return rows


def lineage(arm: str, stages: list[str]) -> list[dict]:
    rows = [{"uri": f"runs/tiny/train/{arm}/{s}", "kind": "checkpoint", "depth": d}
            for d, s in enumerate(reversed(stages))]
    return rows + [{"uri": f"runs/tiny/prepare/{k}-0a1b2c3d", "kind": "parquet-dataset", "depth": len(stages) + i,
                    "manifest": {"code_version": "0.1.0+g1234567", "created_at": "2026-12-01T10:00:00+00:00"}}
                   for i, k in enumerate(("chunks", "rewrites", "thoughts", "filtered", "docs"))] + \
        [{"uri": "bundled:c4", "kind": "source", "depth": len(stages) + 5},
         {"uri": "bundled:smollm2-135m-instruct", "kind": "source", "depth": len(stages) + 5}]


def tiny_results(circular: bool = True, seed: int = 0) -> RunResults:
    rng = random.Random(seed)
    stages = {"base": [], BASE: ["sft", "rlmt"], SIP_ARM: ["pretrain-dpo", "sft", "rlmt"],
              NTP_ARM: ["pretrain-ntp"], SIP_ONLY: ["pretrain-dpo"]}
    shared = {"pretrain-dpo": stage_rows(rng, "pretrain-dpo")}  # base→SIP is the start of base→SIP→SFT→RLMT
    arms = []
    for name, recipes in stages.items():
        key = "sip" if "SIP" in name else name
        sts = [Stage(recipe=r, checkpoint=f"runs/tiny/train/{key}/{r}",
                     metrics=shared.get(r) or stage_rows(rng, r)) for r in recipes]
        if sts:
            sts[-1].lineage = lineage(key, recipes)
        arms.append(Arm(name=name, stages=sts, evaluations=evaluations(rng, name)))
    comparisons = []
    for a, b in PAIRS:
        v = votes(rng, 8, rng.uniform(0.3, 0.7), 4)
        wins = sum(sum(x) / len(x) > .5 for x in v)
        rep = RepetitionStats(n=8, mean_distinct=0.9)
        comparisons += [
            Comparison(a=a, b=b, label="8 held-out prefixes, greedy 48 tokens", result=WinRateResult(
                n=8, seeds=[0, 1], judge=PROXY, wins=wins, losses=8 - wins,
                win_rate=counting(wilson_interval(wins, 8), "prefixes"), vote_win_rate=clustered_interval(v),
                position_bias=0.5)),
            Comparison(a=a, b=b, label="8 held-out prefixes, greedy 48 tokens", result=CoherenceResult(
                n=8, seeds=[0, 1], judge=PROXY, score=clustered_interval(votes(rng, 8, .5, 4)), repetition_a=rep,
                repetition_b=rep))]
    judge = {"backend": "proxy", "model": "none", "verdict": "sample"}
    return RunResults(
        run_name="tiny", created_at="2026-12-02 12:00 UTC",
        config={"preset": "tiny", "policy": "bundled:smollm2-135m-instruct", "judge": "proxy", "data": "bundled:c4",
                "pretrain_steps": 30, "sft_steps": 30, "rlmt_steps": 30, "k_rollouts": 2},
        arms=arms, comparisons=comparisons,
        judge_audit={"judge": PROXY, "passed": True, "reasons": [], "position_bias": 0.5, "parse_failure_rate": 0.0,
                     "dimensions": {"quality": {"items": 16, "judgments": 32, "accuracy": 1.0, "seed_agreement": 1.0,
                                                "order_consistency": 1.0, "invalid": 0}}},
        judges={"training": judge, "evaluation": judge if circular else {**judge, "model": "other-judge"},
                "circular": circular, "reasons": ["the evaluation judge is the training judge (proxy: none)"]
                if circular else []},
        notes=["judge backend: proxy (none); a proxy judge is a stand-in, not evidence about the method"])
