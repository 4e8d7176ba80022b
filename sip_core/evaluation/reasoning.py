"""Reasoning: GSM8K and MATH-500 with k samples per problem, Mean@k and Pass@k.

Answer extraction is ours (last `\\boxed{...}`, else a `#### x` line, else "answer is x", else the
last number); the **equality check is Math-Verify's** (`math_verify.parse` / `verify`), never a
home-made comparison. Math-Verify times out with signal.alarm, which works only in the main
thread: elsewhere (Prefect task threads) its timeouts are switched off.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from sip_core.evaluation.stats import EvalResult, Interval, bounded_mean_interval, counting, pass_at_k
from sip_core.infra.paths import default_data_dir


class Problem(BaseModel):
    id: str
    question: str
    answer: str  # the gold final answer (GSM8K: the number after ####; MATH: the `answer` field)
    solution: str | None = None
    dataset: str = ""


def _jsonl_rows(data_dir: str | Path | None, name: str, limit: int | None):
    """(index, row) of `eval/<name>/test.jsonl` under the data folder, the first `limit` rows."""
    base = Path(data_dir) if data_dir else default_data_dir()
    with open(base / "eval" / name / "test.jsonl", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if limit is not None and i >= limit:
                break
            yield i, json.loads(line)


def load_gsm8k(data_dir: str | Path | None = None, limit: int | None = None) -> list[Problem]:
    """GSM8K test (1,319 problems); gold = the text after "####", thousands commas removed."""
    return [Problem(id=f"gsm8k/{i}", question=row["question"], answer=_after_hashes(row["answer"]),
                    solution=row["answer"], dataset="gsm8k") for i, row in _jsonl_rows(data_dir, "gsm8k", limit)]


def _after_hashes(solution: str) -> str:
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def load_math500(data_dir: str | Path | None = None, limit: int | None = None) -> list[Problem]:
    """MATH-500 (500 problems); gold = the `answer` field (LaTeX)."""
    return [Problem(id=row["unique_id"], question=row["problem"], answer=row["answer"], solution=row["solution"],
                    dataset="math500") for _, row in _jsonl_rows(data_dir, "math500", limit)]


PROMPT = ("Solve the following math problem. Reason step by step, then give the final answer as "
          "\\boxed{{answer}}.\n\n{question}")


def reasoning_prompt(question: str, template: str = PROMPT) -> str:
    return template.format(question=question)


# --------------------------------------------------------------------------- extraction


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if there is none
    or it never closes."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    i = starts[-1]
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*\$?([^\n$]+?)\$?\s*(?:\.\s|\.?$|\n)", re.IGNORECASE)


def extract_answer(completion: str) -> str | None:
    """The final answer a completion states: the last \\boxed{} content, else the text after the
    last "####", else "the answer is X", else the last number (commas dropped); None if none."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    if "####" in completion:
        tail = completion.rsplit("####", 1)[1].strip().splitlines()
        if tail and tail[0].strip():
            return tail[0].strip().replace(",", "")
    said = _ANSWER_IS.findall(completion)
    if said:
        return said[-1].strip()
    numbers = _NUMBER.findall(completion)
    if numbers:
        return numbers[-1].replace(",", "").rstrip(".")
    return None


def _timeouts() -> dict:
    main = threading.current_thread() is threading.main_thread()
    return {"parse": 5 if main else None, "verify": 5 if main else None}


def _mv_parse(text: str):
    from math_verify import parse

    # "$\boxed{x}$": Math-Verify's LaTeX extractor then takes exactly x (plain numbers parse too)
    return parse(f"$\\boxed{{{text}}}$", parsing_timeout=_timeouts()["parse"])


def is_correct(completion: str, gold: str, _gold_parsed=None) -> bool:
    """Does the completion's extracted final answer equal the gold one, per Math-Verify?"""
    answer = extract_answer(completion)
    if answer is None:
        return False
    from math_verify import verify

    gold_p = _gold_parsed if _gold_parsed is not None else _mv_parse(gold)
    pred_p = _mv_parse(answer)
    if not gold_p or not pred_p:
        return False
    return bool(verify(gold_p, pred_p, timeout_seconds=_timeouts()["verify"]))


class ReasoningResult(EvalResult):
    metric: str = "mean_pass_at_k"
    dataset: str = ""
    k: int = Field(description="samples per problem used for Pass@k")
    samples: int = Field(0, description="samples per problem (Mean@k uses all of them)")
    mean_at_k: Interval = Field(description="share of correct samples, averaged per problem then over problems")
    pass_at_k: Interval = Field(description="unbiased pass@k estimator, averaged over problems")
    no_answer: int = Field(0, description="samples from which no final answer could be extracted")
    correct_per_problem: list[int] = Field(default_factory=list)
    sampling: dict = Field(default_factory=dict)


def score_reasoning(problems: Sequence[Problem], completions: Sequence[Sequence[str]], k: int | None = None,
                    seeds: Sequence[int] = (), sampling: dict | None = None) -> ReasoningResult:
    """Mean@k and Pass@k for `completions[i]` = the samples for problems[i] (each problem needs
    at least k; k defaults to the number of samples)."""
    if len(problems) != len(completions):
        raise ValueError("one list of samples per problem")
    counts = [len(c) for c in completions]
    if not counts or min(counts) == 0:
        raise ValueError("every problem needs at least one sample")
    k = k or min(counts)
    if k > min(counts):
        raise ValueError(f"k={k} but some problem has only {min(counts)} samples")
    correct, means, passes, no_answer = [], [], [], 0
    for p, samples in zip(problems, completions):
        gold = _mv_parse(p.answer)
        flags = [is_correct(s, p.answer, gold) for s in samples]
        no_answer += sum(extract_answer(s) is None for s in samples)
        c = sum(flags)
        correct.append(c)
        means.append(c / len(samples))
        passes.append(pass_at_k(len(samples), c, k))
    datasets = sorted({p.dataset for p in problems})
    return ReasoningResult(n=len(problems), seeds=list(seeds), k=k, samples=min(counts),
                           dataset=",".join(datasets), mean_at_k=counting(bounded_mean_interval(means), "problems"),
                           pass_at_k=counting(bounded_mean_interval(passes), "problems"), no_answer=no_answer,
                           correct_per_problem=correct, sampling=dict(sampling or {}),
                           metric=f"mean_pass_at_{k}")


def reasoning_eval(generate: Callable[[list[str], int], list[list[str]]], problems: Sequence[Problem], k: int,
                   template: str = PROMPT, seeds: Sequence[int] = (), sampling: dict | None = None) -> ReasoningResult:
    """Sample k completions per problem with `generate` (a TextFn, e.g. `text_sampler(model, tok,
    max_new_tokens, temperature=0.6, top_p=0.95, chat=True)`) and score them."""
    prompts = [reasoning_prompt(p.question, template) for p in problems]
    completions = generate(prompts, k)
    return score_reasoning(problems, completions, k, seeds=seeds, sampling=sampling)
