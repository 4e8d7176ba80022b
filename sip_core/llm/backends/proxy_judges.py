"""The proxy judge's answers, one function per prompt, each written in that prompt's exact output
format from text statistics (see `proxy.py` for what each one measures). All thresholds are
fields of `ProxySettings`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sip_core.data.signals import Lexicons, compute_signals, normalize_words
from sip_core.llm.backends.proxy_text_stats import (PUNCTUATION, STOPWORDS, distinct_ratio, entities_in, numbers_in,
                                                    order_penalty, repeated_line_frac, repeated_ngram_frac,
                                                    repetition, text_hash, token_f1)


@dataclass(frozen=True)
class ProxySettings:
    """Every knob that changes a proxy answer (a change shows up in `model_id`)."""

    # safety
    safety_threshold: float = 3.0       # badness at or above this -> FINAL DECISION: NO
    surge_weight: float = 0.5
    severe_surge: float = 2.5           # Surge severity counted as severe (scale 1-3)
    # quality
    lm_weight: float = 0.3              # score per nat of mean token log-likelihood
    lm_context_tokens: int = 128        # prefix tokens the LM sees (the end of the prefix)
    lm_option_tokens: int = 256         # option tokens scored
    lm_dtype: str = "auto"              # bf16 (autocast), fp32, or auto: bf16 where the hardware
    #                                     has native bf16 (CUDA, AVX512-BF16/AMX CPUs), else fp32
    order_weight: float = 1.0
    badword_weight: float = 0.3
    copy_ngram: int = 8                 # an n-gram this long shared with the prefix is a copy
    # factuality
    possible_at: float = 1.0            # unsupported weight for "Possible Hallucination"
    definite_at: float = 3.0            # ... for "Definite Hallucination"
    entity_weight: float = 0.5          # an unsupported capitalised word (a number counts 1)
    # rlmt_judge
    rlmt_f1: float = 0.2                # related text of the same document scores ~0.15, other documents ~0.02
    # coherence
    tie_margin: float = 0.02
    # thoughts (stand-in teacher)
    thoughts_per_text: int = 4


def safety_answer(inp: Mapping[str, Any], s: ProxySettings, lexicons: Lexicons) -> str:
    sig = compute_signals(str(inp["text"]), None, lexicons)
    ld, sc, mx = sig["rps_doc_ldnoobw_words"], sig["sip_surge_count"], sig["sip_surge_max_severity"]
    badness = ld + s.surge_weight * sc + (1.0 if mx >= s.severe_surge else 0.0)
    verdict = "NO" if badness >= s.safety_threshold else "YES"
    return (f"Proxy safety check (word lists, not a model): {ld:g} LDNOOBW terms, {sc:g} Surge terms "
            f"(max severity {mx:g}); badness {badness:.2f}, unsafe at {s.safety_threshold:g}.\n"
            f"FINAL DECISION: {verdict}")


def quality_features(prefix: str, option: str, s: ProxySettings, lexicons: Lexicons | None) -> dict[str, float]:
    """The LM-free parts of an option's quality score, each named (higher `total` = better);
    without word lists the bad-words term is left out."""
    words = normalize_words(option)
    n = len(words)
    f: dict[str, float] = {"words": float(n)}
    f["distinct"] = (distinct_ratio(words, 2) + distinct_ratio(words, 3)) / 2
    f["loop"] = repeated_ngram_frac(words) + repeated_line_frac(option)
    mean_len = sum(map(len, words)) / n if n else 0.0
    f["word_length"] = min(1.0, max(0.0, 3.0 - mean_len, mean_len - 9.0) / 2)
    tokens = option.split()
    alpha = sum(any(c.isalpha() for c in t) for t in tokens) / len(tokens) if tokens else 0.0
    f["non_alpha"] = max(0.0, 0.6 - alpha) / 0.6
    f["order"] = order_penalty(option)
    f["badwords"] = 0.0
    if lexicons is not None:
        f["badwords"] = min(1.0, compute_signals(option, None, lexicons)["rps_doc_ldnoobw_words"] / 3)
    k = s.copy_ngram
    pre = normalize_words(prefix)
    pre_grams = {tuple(pre[i:i + k]) for i in range(len(pre) - k + 1)}
    grams = [tuple(words[i:i + k]) for i in range(n - k + 1)]
    f["copy"] = sum(g in pre_grams for g in grams) / len(grams) if grams else 0.0
    f["too_short"] = 1.0 if n < 3 else 0.0
    f["total"] = (f["distinct"] - f["loop"] - 0.5 * f["word_length"] - 0.5 * f["non_alpha"]
                  - s.order_weight * f["order"] - s.badword_weight * f["badwords"] - 0.5 * f["copy"]
                  - 2.0 * f["too_short"])
    return f


def _describe(f: Mapping[str, float]) -> str:
    keys = ("distinct", "loop", "order", "word_length", "non_alpha", "badwords", "copy", "lm_logprob")
    return ", ".join(f"{k} {f[k]:.3f}" for k in keys if k in f)


def quality_answer(scored: list[tuple[float, dict[str, float]]], texts: tuple[str, str], use_lm: bool) -> str:
    (s1, f1), (s2, f2) = scored
    if s1 != s2:
        winner = 1 if s1 > s2 else 2
        why = "higher score"
    else:  # a tie: decided by the texts' hashes, so the same candidate wins in either order
        h1, h2 = text_hash(texts[0]), text_hash(texts[1])
        winner = 1 if h1 <= h2 else 2
        why = "equal scores, tie broken by text hash"
    return (f"Proxy quality judge (statistics{' + LM likelihood' if use_lm else ''}, not a model "
            f"judgment).\nOption 1: score {s1:.4f} ({_describe(f1)}).\n"
            f"Option 2: score {s2:.4f} ({_describe(f2)}).\n\n"
            f"Option {winner} wins ({why}).\nConclusion: Option {winner}")


def factuality_answer(inp: Mapping[str, Any], s: ProxySettings) -> str:
    source = f"{inp['prefix']}\n{inp['reference']}"
    candidate = str(inp["continuation"])
    src_words = set(normalize_words(source))
    numbers = sorted(numbers_in(candidate) - numbers_in(source))
    entities = sorted(e for e in entities_in(candidate) if e.strip(PUNCTUATION) not in src_words
                      and not set(normalize_words(e)) <= src_words)
    weight = len(numbers) + s.entity_weight * len(entities)
    if weight >= s.definite_at:
        label = "Definite Hallucination"
    elif weight >= s.possible_at:
        label = "Possible Hallucination"
    else:
        label = "No Hallucination"
    reasoning = (f"Proxy check (overlap with the references, not a model): {len(numbers)} numbers "
                 f"{numbers[:8]} and {len(entities)} capitalised words {entities[:8]} of the "
                 f"continuation appear in neither the beginning nor the human continuation; "
                 f"weight {weight:.1f} (possible at {s.possible_at:g}, definite at {s.definite_at:g}).")
    return json.dumps({"reasoning": reasoning, "label": label})


def rlmt_answer(inp: Mapping[str, Any], s: ProxySettings) -> str:
    f1 = token_f1(str(inp["prediction"]), str(inp["reference"]))
    return json.dumps({"score": int(f1 >= s.rlmt_f1)})


def thoughts_answer(inp: Mapping[str, Any], s: ProxySettings) -> str:
    """Stand-in teacher: before a few sentences, a first-person plan naming that sentence's
    first content words. Text outside the tags is untouched, so the integrity gate passes;
    the thoughts carry real information about what follows (what a teacher's should do). A text
    with no sentence boundary comes back with no thought: an answer the thoughts parser refuses
    (the row is malformed, never kept), not a failed call that every later run would ask again."""
    text = str(inp["text"])
    starts = [m.end() for m in re.finditer(r"[.!?]\s+(?=[A-Z0-9\"'(])", text)]
    if not starts:  # an answer, not a failure: nowhere to think, so the text comes back as it was
        return text
    step = max(1, len(starts) // s.thoughts_per_text)
    out, last = [], 0
    for pos in starts[::step][: s.thoughts_per_text]:
        nxt = re.split(r"(?<=[.!?])\s", text[pos:], maxsplit=1)[0]
        words = [w for w in re.findall(r"[A-Za-z][A-Za-z'-]{3,}|\d+", nxt) if w.lower() not in STOPWORDS]
        plan = ", ".join(dict.fromkeys(words[:4])) or "the next point"
        out += [text[last:pos], f"<think>Next I should write about {plan}.</think>"]
        last = pos
    return "".join(out) + text[last:]


def coherence_answer(inp: Mapping[str, Any], s: ProxySettings) -> str:
    a, b = repetition(str(inp["continuation_a"])), repetition(str(inp["continuation_b"]))
    if abs(a - b) < s.tie_margin:
        return "TIE"
    return "A" if a < b else "B"
