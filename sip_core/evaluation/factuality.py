"""Factuality: TruthfulQA MC1/MC2 by log-likelihood (no judge), and judged factuality of
continuations against the original suffix (P3, with reference).

A *scorer* maps (question, choices) to one log-probability per choice:

    Scorer = Callable[[str, list[str]], list[float]]

`lm_choice_scorer(model, tokenizer)` builds one from a causal LM (sum of the answer tokens'
log-probs after "Q: {question}\\nA:", zero-shot); tests pass scorers that know the answers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from sip_core.config import JudgeConfig
from sip_core.evaluation.stats import (
    EvalResult, Interval, bounded_mean_interval, clustered_interval, judge_id, wilson_interval,
)
from sip_core.evaluation.winrate import EVAL_TEMPERATURE, seed_list
from sip_core.llm.cache import failed_share, require_answers
from sip_core.judge.spec import judge_spec
from sip_core.infra.paths import default_data_dir

Scorer = Callable[[str, list[str]], list[float]]


class MCItem(BaseModel):
    question: str
    mc1_choices: list[str]
    mc1_labels: list[int]
    mc2_choices: list[str]
    mc2_labels: list[int]


def load_truthfulqa_mc(data_dir: str | Path | None = None, version: str = "v1") -> list[MCItem]:
    """TruthfulQA's mc_task.json: "v1" = the classic 817 questions (HF truthful_qa / lm-eval),
    "current" = the Jan-2025 revision (790)."""
    base = Path(data_dir) if data_dir else default_data_dir()
    path = base / "eval" / "truthfulqa" / ("v1/mc_task.json" if version == "v1" else "mc_task.json")
    rows = json.loads(path.read_text(encoding="utf-8"))
    return [MCItem(question=r["question"], mc1_choices=list(r["mc1_targets"]),
                   mc1_labels=list(r["mc1_targets"].values()), mc2_choices=list(r["mc2_targets"]),
                   mc2_labels=list(r["mc2_targets"].values())) for r in rows]


def mc1_correct(logprobs: Sequence[float], labels: Sequence[int]) -> bool:
    """MC1: the highest-scoring choice is a true one (the first maximum counts on ties, which
    lm-eval also does via argmax)."""
    best = max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
    return bool(labels[best])


def mc2_score(logprobs: Sequence[float], labels: Sequence[int]) -> float:
    """MC2: probability mass on the true choices, normalised over all choices:
    sum_true exp(lp) / sum_all exp(lp) (computed stably; -inf means probability 0)."""
    top = max(logprobs)
    if top == -math.inf:
        return 0.0
    probs = [math.exp(lp - top) for lp in logprobs]
    total = sum(probs)
    return sum(p for p, y in zip(probs, labels) if y) / total


class TruthfulQAResult(EvalResult):
    metric: str = "truthfulqa_mc"
    mc1: Interval
    mc2: Interval = Field(description="mean MC2 score with a (conservative) Wilson interval on the sum")
    scorer: str = ""


def truthfulqa_mc(items: Sequence[MCItem], scorer: Scorer, scorer_name: str = "") -> TruthfulQAResult:
    """MC1 accuracy and mean MC2 over the items (no judge: `judge` stays None)."""
    mc1, mc2 = [], []
    for it in items:
        lp1 = list(scorer(it.question, it.mc1_choices))
        lp2 = lp1 if it.mc2_choices == it.mc1_choices else list(scorer(it.question, it.mc2_choices))
        if len(lp1) != len(it.mc1_choices) or len(lp2) != len(it.mc2_choices):
            raise ValueError("scorer must return one log-prob per choice")
        mc1.append(mc1_correct(lp1, it.mc1_labels))
        mc2.append(mc2_score(lp2, it.mc2_labels))
    return TruthfulQAResult(n=len(items), mc1=wilson_interval(sum(mc1), len(mc1)), mc2=bounded_mean_interval(mc2),
                            scorer=scorer_name or getattr(scorer, "__name__", "scorer"))


def lm_choice_scorer(model, tokenizer, device="cpu", template: str = "Q: {question}\nA:",
                     batch_size: int = 16) -> Scorer:
    """Scorer over a causal LM: each choice is scored as " " + choice after the rendered template,
    by the sum of its tokens' log-probs (unnormalised, as lm-eval's truthfulqa_mc). Zero-shot:
    lm-eval prepends a 6-shot QA preamble, so numbers are not directly comparable to it."""
    import torch

    from sip_core.training.logprobs import completion_logprobs

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @torch.no_grad()
    def score(question: str, choices: list[str]) -> list[float]:
        prompt = tokenizer(template.format(question=question), add_special_tokens=False)["input_ids"]
        comps = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in choices]
        out: list[float] = []
        for i in range(0, len(comps), batch_size):
            chunk = comps[i:i + batch_size]
            sums, _, _ = completion_logprobs(model, [prompt] * len(chunk), chunk, pad, device)
            out += [float(x) for x in sums]
        return out

    score.__name__ = "lm_sum_logprob"
    return score


class JudgedFactualityResult(EvalResult):
    metric: str = "factuality"
    score: Interval = Field(description="mean P3 score (No 1 / Possible 0.5 / Definite Hallucination 0), per "
                            "prefix over seeds, then over prefixes (clustered: n = prefixes)")
    invalid: int = 0
    invalid_judgments: int = 0
    labels: dict[str, int] = Field(default_factory=dict, description="per-judgment label counts")


def judged_factuality(judge, cfg: JudgeConfig, prefixes: Sequence[str], references: Sequence[str],
                      continuations: Sequence[str], seeds: int | Sequence[int] = 8,
                      temperature: float | None = EVAL_TEMPERATURE) -> JudgedFactualityResult:
    """Pointwise factuality of each continuation with the original suffix as the reference
    (P3-v4), averaged over seeds per item, then over items; items with no valid judgment are
    excluded (`invalid`). The interval is clustered by item: one item's seeds are not
    independent draws (`clustered_interval`)."""
    if not len(prefixes) == len(references) == len(continuations):
        raise ValueError("prefixes, references and continuations differ in length")
    seeds = seed_list(seeds)
    spec = judge_spec(cfg)  # a trained judge's prompt version and prefill (factuality is always sampled)
    prompt = spec.prompt("factuality")
    tags, requests = [], []
    for i in range(len(prefixes)):
        for s in seeds:
            requests.append(spec.render("factuality", {"seed": s, "temperature": temperature}, prefix=prefixes[i],
                                        reference=references[i], continuation=continuations[i]))
            tags.append(i)
    judgments = judge.run_parsed(requests, cfg.parse_retries) if requests else []
    require_answers("judged factuality", judgments, failed_share(judge))  # all failed: no result, never a score
    votes: list[list[float]] = [[] for _ in prefixes]
    names = {1.0: "No Hallucination", 0.5: "Possible Hallucination", 0.0: "Definite Hallucination"}
    labels: dict[str, int] = {}
    for i, j in zip(tags, judgments):
        if j.ok:
            votes[i].append(float(j.value))
            labels[names[float(j.value)]] = labels.get(names[float(j.value)], 0) + 1
    per_item = [sum(v) / len(v) for v in votes if v]
    return JudgedFactualityResult(n=len(per_item), seeds=seeds, judge=judge_id(judge),
                                  score=clustered_interval(votes), invalid=len(prefixes) - len(per_item),
                                  invalid_judgments=sum(not j.ok for j in judgments), labels=labels,
                                  details={"temperature": temperature, "prompt": prompt.key})
