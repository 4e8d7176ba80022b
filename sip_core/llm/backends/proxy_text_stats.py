"""Text statistics behind the offline proxy judge: repetition, word-order plausibility, overlap
with a reference, numbers and named things. Plain functions on strings, no model."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

from sip_core.data.signals import normalize_words

STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself just
me more most my myself no nor not now of off on once only or other our ours ourselves out over
own same she should so some such than that the their theirs them themselves then there these they
this those through to too under until up very was we were what when where which while who whom
why will with would you your yours yourself yourselves
""".split())
_DETERMINERS = frozenset("a an the this these those every each its their our your my his".split())
_PREPOSITIONS = frozenset("of in on at for with from by into about over under through between during "
                          "without within against among".split())
_CONJUNCTIONS = frozenset("and or but nor".split())
# Function words that start sentences but are lowercase inside them.
_SENTENCE_STARTERS = frozenset("the a an this these those it in on at for and but or so if when while "
                               "there they we he she its their our of to with as by from".split())
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*$")
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
PUNCTUATION = "\"'()[]{}<>.,;:!?\u201c\u201d\u2018\u2019*_-\u2013\u2014"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def distinct_ratio(words: list[str], n: int) -> float:
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repeated_ngram_frac(words: list[str], n: int = 4) -> float:
    """Share of n-gram positions whose n-gram already occurred earlier (loops)."""
    seen: set[tuple[str, ...]] = set()
    repeats = total = 0
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        total += 1
        repeats += gram in seen
        seen.add(gram)
    return repeats / total if total else 0.0


def repeated_line_frac(text: str) -> float:
    lines = [" ".join(ln.split()).lower() for ln in text.splitlines()]
    lines = [ln for ln in lines if len(ln) > 3]
    if len(lines) < 2:
        return 0.0
    return sum(c - 1 for c in Counter(lines).values()) / len(lines)


def repetition(text: str) -> float:
    """0 for text that never repeats itself, towards 1 for a loop (coherence judge, quality)."""
    words = normalize_words(text)
    if len(words) < 2:
        return 0.0
    return ((1 - distinct_ratio(words, 2)) + (1 - distinct_ratio(words, 3)) + repeated_ngram_frac(words)
            + repeated_line_frac(text)) / 4


def _impossible_pair(w: str, w2: str) -> bool:
    """Function-word pairs that ordinary English never has: "the of", "a and", "of and", "the the"."""
    if w in _DETERMINERS:
        return w2 in _DETERMINERS or w2 in _PREPOSITIONS or w2 in _CONJUNCTIONS
    if w in _PREPOSITIONS or w in _CONJUNCTIONS:
        return w2 in _CONJUNCTIONS or (w == w2)
    return w == w2 and w in STOPWORDS


def order_penalty(text: str) -> float:
    """Signs of scrambled word order, from raw tokens (no LM): sentence ends followed by a
    lowercase word, capitalised function words inside sentences, impossible function-word pairs
    ("the of", "a and"). About 0 for ordinary prose, 0.5-1 for shuffled words."""
    tokens = text.split()
    if len(tokens) < 4:
        return 0.0
    ends = lower_after_end = midcaps = bad_pairs = 0
    bare = [t.strip(PUNCTUATION) for t in tokens]
    line_start = {0}
    pos = 0
    for i, tok in enumerate(tokens):  # tokens that begin a line count as sentence starts
        at = text.find(tok, pos)
        if i and "\n" in text[pos:at]:
            line_start.add(i)
        pos = at + len(tok)
    for i in range(len(tokens) - 1):
        tok, w, w2 = tokens[i], bare[i].lower(), bare[i + 1]
        if _SENTENCE_END.search(tok) and len(bare[i]) > 1:
            ends += 1
            if w2[:1].islower():
                lower_after_end += 1
        elif ((i + 1) not in line_start and w2[:1].isupper() and w2[1:].islower()
              and w2.lower() in _SENTENCE_STARTERS and not tok.endswith((":", ";", "\u201c", '"'))):
            midcaps += 1
        w2 = w2.lower()
        if tok == bare[i] and _impossible_pair(w, w2):
            bad_pairs += 1
    pairs = len(tokens) - 1
    return (lower_after_end / ends if ends else 0.0) * 0.5 + min(1.0, 10 * midcaps / pairs) * 0.5 \
        + min(1.0, 10 * bad_pairs / pairs) * 0.5


def _content_words(text: str) -> list[str]:
    words = normalize_words(text)
    content = [w for w in words if w not in STOPWORDS]
    return content or words


def token_f1(prediction: str, reference: str) -> float:
    """Bag-of-words F1 over content words (all words when a side has no content word)."""
    pred, ref = Counter(_content_words(prediction)), Counter(_content_words(reference))
    common = sum((pred & ref).values())
    if not common:
        return 0.0
    p, r = common / sum(pred.values()), common / sum(ref.values())
    return 2 * p * r / (p + r)


def numbers_in(text: str) -> set[str]:
    return {m.group(0).replace(",", "").rstrip(".") for m in _NUMBER.finditer(text)}


def entities_in(text: str) -> set[str]:
    """Capitalised words not at a sentence or line start (lowercased), "I" excluded."""
    out: set[str] = set()
    for line in text.splitlines():
        tokens = line.split()
        for i, tok in enumerate(tokens):
            word = tok.strip(PUNCTUATION)
            if i == 0 or _SENTENCE_END.search(tokens[i - 1]) or tokens[i - 1].endswith(":"):
                continue
            if len(word) > 1 and word[0].isupper() and any(c.isalpha() for c in word):
                out.add(word.lower())
    return out
