"""Rule-based corruptions of a suffix: the offline source of binary-choice items (original vs
corrupted) for the judge audit and for synthetic quality-judge data (method §3 P4).

Each rule returns the corrupted text, or None when it does not apply (no numbers to swap, one
sentence only...), so callers count coverage instead of silently getting an unchanged text.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")
_NUMBER = re.compile(r"\b\d+(?:[.,]\d+)?\b")
_CAPITALISED = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]{2,}\b")


def _rng(text: str, rule: str, seed: int) -> random.Random:
    return random.Random(int(hashlib.sha256(f"{seed}:{rule}:{text}".encode()).hexdigest()[:12], 16))


def shuffle_sentences(text: str, rng: random.Random) -> str | None:
    parts = _SENTENCE.split(text.strip())
    if len(parts) < 3:
        return None
    order = list(range(len(parts)))
    while order == sorted(order):
        rng.shuffle(order)
    return " ".join(parts[i] for i in order)


def swap_numbers(text: str, rng: random.Random) -> str | None:
    """Replace every number by a different plausible one (a factual corruption)."""
    if not _NUMBER.search(text):
        return None

    def change(match: re.Match) -> str:
        raw = match.group(0)
        digits = raw.replace(",", "").replace(".", "")
        value = int(digits) if digits.isdigit() else 0
        new = value + rng.choice([-1, 1]) * max(1, int(value * rng.uniform(0.2, 0.9)))
        return str(abs(new) if new != value else value + 1)

    return _NUMBER.sub(change, text)


def swap_entities(text: str, rng: random.Random) -> str | None:
    """Exchange two different capitalised names inside the text (a factual corruption)."""
    names = list(dict.fromkeys(m.group(0) for m in _CAPITALISED.finditer(text)))
    if len(names) < 2:
        return None
    a, b = rng.sample(names, 2)
    return re.sub(rf"\b({re.escape(a)}|{re.escape(b)})\b", lambda m: b if m.group(0) == a else a, text)


def inject_profanity(text: str, rng: random.Random, words: list[str]) -> str | None:
    """Insert bad words between words (a safety corruption)."""
    tokens = text.split()
    if len(tokens) < 6 or not words:
        return None
    for word in rng.sample(words, min(5, len(words))):
        tokens.insert(rng.randrange(1, len(tokens)), word)
    return " ".join(tokens)


def repeat_loop(text: str, rng: random.Random) -> str | None:
    """Degenerate repetition, the typical failure of a weak policy (a quality corruption)."""
    tokens = text.split()
    if len(tokens) < 8:
        return None
    start = rng.randrange(0, len(tokens) // 2)
    span = tokens[start:start + rng.randint(3, 6)]
    looped = tokens[:start] + span * (len(tokens) // max(1, len(span)))
    return " ".join(looped[:len(tokens)])


RULES: dict[str, tuple[str, Callable]] = {
    # name -> (dimension it tests, function)
    "shuffle_sentences": ("quality", shuffle_sentences),
    "repeat_loop": ("quality", repeat_loop),
    "swap_numbers": ("factuality", swap_numbers),
    "swap_entities": ("factuality", swap_entities),
    "inject_profanity": ("safety", inject_profanity),
}


def corrupt(text: str, rule: str, seed: int = 0, badwords: list[str] | None = None) -> str | None:
    dimension, fn = RULES[rule]
    rng = _rng(text, rule, seed)
    out = fn(text, rng, badwords or []) if rule == "inject_profanity" else fn(text, rng)
    return out if out is not None and out.strip() != text.strip() else None
