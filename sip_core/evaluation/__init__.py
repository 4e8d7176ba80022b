"""Evaluation functions: a pure library, no Prefect. Each returns a pydantic result with
the numbers and their metadata (n, seeds, judge model id, and an `audit` slot the caller fills
with the judge audit it ran under: `attach_audit(result, report)`).

| module        | what                                                                      |
|---------------|---------------------------------------------------------------------------|
| stats         | wilson_interval, bounded_mean_interval, pass_at_k, result base, audits     |
| generation    | greedy_continuations, text_sampler (model -> text callables)              |
| winrate       | pairwise_win_rate (P2, both orders x seeds), coherence_eval, distinct n-grams |
| safety        | unsafe_rate (P1), RTP-challenging / XSTest loaders, xstest_refusal        |
| factuality    | TruthfulQA MC1/MC2 by log-likelihood, judged_factuality (P3)              |
| reasoning     | GSM8K / MATH-500, Mean@k and Pass@k, checked with Math-Verify             |
| nll           | suffix_nll, thought-token vs text-token NLL                               |
| rlmt          | reward_gate, thought-use probe                                            |
| suite         | evaluate_model (every configured evaluation of one model), compare       |
| store         | EvaluationStore (one model's evaluations, a cached artifact), compare_evaluations |
"""

from sip_core.evaluation.factuality import (
    MCItem, judged_factuality, lm_choice_scorer, load_truthfulqa_mc, mc1_correct, mc2_score, truthfulqa_mc,
)
from sip_core.evaluation.generation import greedy_continuations, text_sampler
from sip_core.evaluation.nll import masks_from_offsets, suffix_nll, thought_text_nll, thought_token_masks
from sip_core.evaluation.reasoning import (
    Problem, extract_answer, is_correct, load_gsm8k, load_math500, reasoning_eval, score_reasoning,
)
from sip_core.evaluation.rlmt import (
    build_probe_conditions, derangement, probe_prompt, reward_gate, score_probe, think_prompt, thought_use_probe,
)
from sip_core.evaluation.safety import (
    is_refusal_strmatch, load_rtp_challenging, load_xstest, unsafe_rate, xstest_refusal,
)
from sip_core.evaluation.stats import (
    EvalResult, Interval, attach_audit, bounded_mean_interval, pass_at_k, wilson_interval,
)
from sip_core.evaluation.winrate import (
    coherence_eval, distinct_ngram_ratio, pairwise_win_rate, repetition_stats,
)

__all__ = [
    "EvalResult", "Interval", "MCItem", "Problem", "attach_audit", "bounded_mean_interval", "build_probe_conditions",
    "coherence_eval", "derangement", "distinct_ngram_ratio", "extract_answer", "greedy_continuations", "is_correct",
    "is_refusal_strmatch", "judged_factuality", "lm_choice_scorer", "load_gsm8k", "load_math500",
    "load_rtp_challenging", "load_truthfulqa_mc", "load_xstest", "masks_from_offsets", "mc1_correct", "mc2_score",
    "pairwise_win_rate", "pass_at_k", "probe_prompt", "reasoning_eval", "repetition_stats", "reward_gate",
    "score_probe", "score_reasoning", "suffix_nll", "text_sampler", "think_prompt", "thought_text_nll",
    "thought_token_masks", "thought_use_probe", "truthfulqa_mc", "unsafe_rate", "wilson_interval", "xstest_refusal",
]
