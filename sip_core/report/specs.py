"""What the report shows for each kind of evaluation result: its section, table columns, row
and the headline intervals compared across arms."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sip_core.evaluation.factuality import JudgedFactualityResult, TruthfulQAResult
from sip_core.evaluation.nll import NLLResult, ThoughtNLLResult
from sip_core.evaluation.reasoning import ReasoningResult
from sip_core.evaluation.rlmt import CONDITIONS, ProbeResult, RewardGateResult
from sip_core.evaluation.safety import RefusalResult, SafetyResult
from sip_core.evaluation.stats import EvalResult, Interval
from sip_core.evaluation.winrate import CoherenceResult, RepetitionStats, WinRateResult
from sip_core.report.format import DASH, fmt_iv, fmt_num, fmt_pct

Row = Callable[[Any], list[str]]
# type -> (section, headers, row function, headline intervals: [(label, getter, better)])
SPECS: dict[type, tuple[str, list[str], Row, list[tuple[str, Callable[[Any], Interval | None], str]]]] = {
    SafetyResult: ("safety", ["safe rate", "unsafe rate", "invalid"],
                   lambda r: [fmt_iv(r.safe) if r.safe is not None else fmt_pct(r.safe_rate), fmt_iv(r.unsafe),
                              fmt_num(r.invalid)],
                   [("unsafe rate", lambda r: r.unsafe, "lower")]),
    RefusalResult: ("safety", ["over-refusal (safe half)", "refusal (unsafe half)", "compliance (unsafe half)",
                               "judged safe (safe half / unsafe half)", "detector"],
                    lambda r: [fmt_iv(r.over_refusal), fmt_iv(r.unsafe_refusal) if r.unsafe_refusal else DASH,
                               fmt_iv(r.unsafe_compliance) if r.unsafe_compliance else DASH,
                               " / ".join(fmt_iv(r.judged_safe[h]) if h in r.judged_safe else DASH
                                          for h in ("safe", "unsafe")) if r.judged_safe else DASH,
                               r.detector],
                    [("XSTest over-refusal", lambda r: r.over_refusal, "lower"),
                     ("XSTest refusal of unsafe prompts", lambda r: r.unsafe_refusal, "higher")]),
    TruthfulQAResult: ("factuality", ["MC1", "MC2", "scorer"],
                       lambda r: [fmt_iv(r.mc1), fmt_iv(r.mc2), r.scorer or DASH],
                       [("TruthfulQA MC1", lambda r: r.mc1, "higher"), ("TruthfulQA MC2", lambda r: r.mc2, "higher")]),
    JudgedFactualityResult: ("factuality", ["factuality score", "invalid", "labels"],
                             lambda r: [fmt_iv(r.score), fmt_num(r.invalid),
                                        ", ".join(f"{k}: {v}" for k, v in sorted(r.labels.items())) or DASH],
                             [("judged factuality", lambda r: r.score, "higher")]),
    ReasoningResult: ("reasoning", ["Mean@k", "Pass@k", "k", "samples", "no answer"],
                      lambda r: [fmt_iv(r.mean_at_k), fmt_iv(r.pass_at_k), str(r.k), str(r.samples),
                                 fmt_num(r.no_answer)],
                      [("Mean@k", lambda r: r.mean_at_k, "higher"), ("Pass@k", lambda r: r.pass_at_k, "higher")]),
    NLLResult: ("likelihood", ["NLL (nats/token)", "tokens"], lambda r: [fmt_num(r.nll), fmt_num(r.tokens)], []),
    ThoughtNLLResult: ("likelihood", ["thought NLL", "text NLL", "thought tokens", "text tokens", "rows w/o thought"],
                       lambda r: [fmt_num(r.thought_nll), fmt_num(r.text_nll), fmt_num(r.thought_tokens),
                                  fmt_num(r.text_tokens), fmt_num(r.rows_without_thought)], []),
    RewardGateResult: ("rlmt", ["reward", "gate", "invalid rate", "near-zero-variance", "mixed groups", "reasons"],
                       lambda r: [fmt_iv(r.reward), "PASSED" if r.passed else "FAILED", fmt_pct(r.invalid_rate),
                                  fmt_pct(r.near_zero_variance_rate), fmt_pct(r.mixed_group_rate),
                                  "; ".join(r.reasons) or DASH],
                       [("RLMT reward", lambda r: r.reward, "higher")]),
    ProbeResult: ("rlmt", [*CONDITIONS, "format failures"],
                  lambda r: [*(fmt_iv(r.by_condition.get(c)) if c in r.by_condition else DASH for c in CONDITIONS),
                             ", ".join(f"{k}: {v}" for k, v in r.format_failures.items() if v) or "0"],
                  [(f"probe reward, {c} thought", (lambda r, c=c: r.by_condition.get(c)), "higher")
                   for c in CONDITIONS]),
    CoherenceResult: ("generation", ["coherence score (vs reference)", "invalid", "distinct-4 (A / B)"],
                      lambda r: [fmt_iv(r.score), fmt_num(r.invalid),
                                 f"{fmt_num(r.repetition_a.mean_distinct)} / {fmt_num(r.repetition_b.mean_distinct)}"],
                      [("coherence score", lambda r: r.score, "higher")]),
    WinRateResult: ("generation", ["win rate", "W / L / T", "invalid", "position bias"],
                    lambda r: [fmt_iv(r.win_rate), f"{r.wins} / {r.losses} / {r.ties}", fmt_num(r.invalid),
                               fmt_num(r.position_bias)],
                    [("win rate", lambda r: r.win_rate, "higher")]),
    RepetitionStats: ("generation", ["mean distinct n-gram ratio", "too short"],
                      lambda r: [fmt_num(r.mean_distinct), fmt_num(r.too_short)], []),
}

SECTIONS = (("generation", "Generation quality"), ("safety", "Safety"), ("factuality", "Factuality"),
            ("reasoning", "Reasoning"), ("likelihood", "Likelihood (held-out NLL)"),
            ("rlmt", "RLMT reward gate and thought-use probe"), ("other", "Other evaluations"))
# Evaluations a full run has; absent from every arm, they still get a "not run" line.
EXPECTED = {"generation": ["coherence"], "safety": ["safety_rtp", "xstest"],
            "factuality": ["truthfulqa", "judged_factuality"], "reasoning": ["gsm8k", "math500"],
            "likelihood": ["heldout_nll", "thought_nll"], "rlmt": ["reward_gate", "probe"]}


def spec_of(result: EvalResult):
    for cls in type(result).__mro__:
        if cls in SPECS:
            return SPECS[cls]
    return ("other", ["details"], lambda r: [json.dumps(r.details, default=str)[:200] or DASH], [])


def caption_of(sample: EvalResult) -> str:
    if isinstance(sample, (SafetyResult, JudgedFactualityResult, WinRateResult, CoherenceResult)):
        extra = f", judge temperature {sample.details.get('temperature')}" if "temperature" in sample.details else ""
    else:
        extra = ""
    lower = {SafetyResult: "lower unsafe rate is better", RefusalResult: "lower over-refusal is better",
             NLLResult: "nats per token, lower = closer imitation", ThoughtNLLResult: "mean of per-row means"}
    note = next((v for k, v in lower.items() if isinstance(sample, k)), "higher is better")
    return f"{sample.metric}: estimate [Wilson 95% CI]; {note}{extra}"
