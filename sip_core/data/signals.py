"""RedPajama-V2-style quality signals plus bad-word counts, computed from raw text.

Runs on every document of a corpus, so the hot path is plain str methods, one C-level
Counter and set/dict lookups; anything that can be precomputed lives on `Lexicons`.
"""

from __future__ import annotations

import csv
import json
import string
from collections import Counter
from dataclasses import dataclass, field
from itertools import compress, count, repeat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# Stripped from both ends of every token. ASCII punctuation plus the typographic quotes,
# dashes and ellipsis common in web text; inner characters ("g-spot", "s&m") are kept.
_PUNCT = string.punctuation + "\u2018\u2019\u201c\u201d\u00ab\u00bb\u2013\u2014\u2026\u00b7\u00bf\u00a1"
_BULLETS = ("\u2022", "\u2023", "\u25cb", "\u25cf", "\u25e6", "\u25aa", "\u25ab", "\u25a0",
            "\u25a1", "\u2043", "\u2219", "\u27a2", "\u2192", "-", "*", "\u00b7")
SIGNAL_NAMES = (
    "rps_doc_word_count", "rps_doc_mean_word_length", "rps_doc_symbol_to_word_ratio",
    "rps_lines_start_with_bulletpoint", "rps_doc_frac_chars_top_2gram",
    "rps_doc_ldnoobw_words", "rps_doc_ut1_blacklist", "sip_surge_max_severity", "sip_surge_count",
)


def normalize_words(text: str) -> list[str]:
    """Words as every signal here sees them.

    Rule: lowercase the text, split on any whitespace (`str.split()`), strip ASCII
    punctuation and typographic quotes/dashes/ellipsis from both ends of each token, and
    drop tokens that become empty. Inner punctuation stays ("don't", "g-spot"), so a
    term never matches inside a longer word ("classic" is not "ass").
    """
    # map/filter keep the per-token loop in C: this is the hottest line of the module.
    return list(filter(None, map(str.strip, text.lower().split(), repeat(_PUNCT))))


class _TermMatcher:
    """Counts occurrences of (possibly multi-word) terms in a normalised word list.

    Matching is longest-term-first and non-overlapping, so "ball gag" counts once, not
    also as "gag". Terms are normalised with `normalize_words`, so they match exactly
    what the text tokenizer produces.
    """

    def __init__(self, terms: dict[str, float]):
        self.values: dict[tuple[str, ...], float] = {}
        for term, value in terms.items():
            key = tuple(normalize_words(term))
            # Letter-less terms ("69", "@55" -> "55") would fire on ordinary numbers.
            if key and any(c.isalpha() for c in "".join(key)):
                self.values[key] = max(value, self.values.get(key, value))
        # per first word, the lengths of its terms, longest first: common words start only a few
        # multi-word terms ("one" -> 4 words), so a candidate position costs one or two lookups
        lengths: dict[str, set[int]] = {}
        for key in self.values:
            lengths.setdefault(key[0], set()).add(len(key))
        self.lengths = {w: sorted(ls, reverse=True) for w, ls in lengths.items()}
        self.first_words = frozenset(self.lengths)

    def match(self, words: list[str]) -> list[float]:
        # Fast path: many documents share no word with the list at all (isdisjoint walks the list
        # against the frozenset: cheaper than building a set of the words first).
        if self.first_words.isdisjoint(words):
            return []
        hits: list[float] = []
        values, lengths, n, after = self.values, self.lengths, len(words), 0
        # positions of words that start a term, found in C (map/compress), not by a Python loop
        for i in compress(count(), map(self.first_words.__contains__, words)):
            if i < after:  # inside the previous match: matches do not overlap
                continue
            for length in lengths[words[i]]:
                value = values.get(tuple(words[i:i + length])) if length <= n - i else None
                if value is not None:
                    hits.append(value)
                    after = i + length
                    break
        return hits


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"word list not found: {path}")
    return path


@dataclass(repr=False)
class Lexicons:
    """Word lists the signals need; matchers are compiled once in `__post_init__`."""

    ldnoobw: frozenset[str]
    surge_severity: dict[str, float]
    url_blocklist: frozenset[str] = frozenset()
    _ldnoobw: _TermMatcher = field(init=False, repr=False, compare=False)
    _surge: _TermMatcher = field(init=False, repr=False, compare=False)
    _first_words: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.ldnoobw = frozenset(t.lower() for t in self.ldnoobw)
        self.surge_severity = {k.lower(): float(v) for k, v in self.surge_severity.items()}
        self.url_blocklist = frozenset(d.lower().strip(".") for d in self.url_blocklist)
        self._ldnoobw = _TermMatcher(dict.fromkeys(self.ldnoobw, 1.0))
        self._surge = _TermMatcher(self.surge_severity)
        self._first_words = self._ldnoobw.first_words | self._surge.first_words

    def __repr__(self) -> str:  # the default would print every term
        return (f"Lexicons(ldnoobw={len(self.ldnoobw)} terms, surge={len(self.surge_severity)} terms, "
                f"url_blocklist={len(self.url_blocklist)} domains)")

    @classmethod
    def load(cls, wordlist_dir: str | Path, url_blocklist: str | Path | None = None) -> Lexicons:
        """Read LDNOOBW `ldnoobw/en.txt` and Surge `surge_profanity/profanity_en.csv`
        under `wordlist_dir`, plus an optional one-domain-per-line blocklist file."""
        root = Path(wordlist_dir)
        lines = _need(root / "ldnoobw" / "en.txt").read_text(encoding="utf-8").splitlines()
        ldnoobw = frozenset(t.strip().lower() for t in lines if t.strip())
        surge: dict[str, float] = {}
        with _need(root / "surge_profanity" / "profanity_en.csv").open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                term = row["text"].strip().lower()
                if term:
                    surge[term] = max(float(row["severity_rating"]), surge.get(term, 0.0))
        domains: frozenset[str] = frozenset()
        if url_blocklist is not None:
            text = _need(Path(url_blocklist)).read_text(encoding="utf-8")
            domains = frozenset(d.strip() for d in text.splitlines() if d.strip() and not d.startswith("#"))
        return cls(ldnoobw=ldnoobw, surge_severity=surge, url_blocklist=domains)

    def url_blocked(self, url: str | None) -> bool:
        """True if the url's host, or any parent domain of it, is on the blocklist."""
        if not url or not self.url_blocklist:
            return False
        try:
            host = urlsplit(url if "//" in url else "//" + url).hostname or ""
        except ValueError:  # malformed url (e.g. bad IPv6 brackets): treat as not listed
            return False
        parts = host.split(".")
        return any(".".join(parts[i:]) in self.url_blocklist for i in range(len(parts)))


def compute_signals(text: str, url: str | None, lex: Lexicons) -> dict[str, float]:
    """All signals in `SIGNAL_NAMES` for one document (words per `normalize_words`).

    Line-based signals use non-blank lines; `rps_lines_start_with_bulletpoint` is the
    fraction of those lines (RPv2 stores one value per line). The top-2-gram fraction is
    Gopher's: characters (without spaces) of all occurrences of the most frequent word
    bigram over the characters of all words; ties go to the first bigram seen.
    """
    words = normalize_words(text)
    n_words = len(words)
    word_chars = sum(map(len, words))

    lines = [ln for ln in (raw.strip() for raw in text.splitlines()) if ln]
    bullet_frac = sum(ln.startswith(_BULLETS) for ln in lines) / len(lines) if lines else 0.0

    top2 = 0.0
    if n_words > 1 and word_chars:
        bigrams = Counter(zip(words, words[1:]))
        count = max(bigrams.values())
        w1, w2 = next(k for k, v in bigrams.items() if v == count)
        top2 = count * (len(w1) + len(w2)) / word_chars

    # str.count is non-overlapping, so "......" is two ellipses, as in Gopher.
    symbols = text.count("#") + text.count("...") + text.count("\u2026")

    # most documents share no word with either list: one check for both
    listed = not lex._first_words.isdisjoint(words)
    surge = lex._surge.match(words) if listed else []
    bad = len(lex._ldnoobw.match(words)) if listed else 0
    return {
        "rps_doc_word_count": float(n_words),
        "rps_doc_mean_word_length": word_chars / n_words if n_words else 0.0,
        "rps_doc_symbol_to_word_ratio": symbols / n_words if n_words else 0.0,
        "rps_lines_start_with_bulletpoint": bullet_frac,
        "rps_doc_frac_chars_top_2gram": top2,
        "rps_doc_ldnoobw_words": float(bad),
        "rps_doc_ut1_blacklist": 1.0 if lex.url_blocked(url) else 0.0,
        "sip_surge_max_severity": max(surge, default=0.0),
        "sip_surge_count": float(len(surge)),
    }


_RPV2_SCALAR = (
    "rps_doc_word_count", "rps_doc_mean_word_length", "rps_doc_symbol_to_word_ratio",
    "rps_doc_frac_chars_top_2gram", "rps_doc_ldnoobw_words", "ccnet_nlines",
)


def signals_from_rpv2(quality_signals: dict[str, Any] | str) -> dict[str, float]:
    """Signals RedPajama-V2 ships with a document, in our names.

    Each RPv2 value is a span list `[[start, end, value], ...]`: document-level signals
    use the first span's value, `rps_lines_start_with_bulletpoint` averages its per-line
    values into a fraction. `rps_doc_ut1_blacklist` is a UT1 category id, mapped to 1.0.
    Missing or null entries are left out, not zeroed, so the caller keeps its own computed
    value for them (for ut1, RPv2's null "not listed" thus defers to our own blocklist).
    """
    qs = json.loads(quality_signals) if isinstance(quality_signals, str) else quality_signals
    out: dict[str, float] = {}
    for name in _RPV2_SCALAR:
        spans = qs.get(name)
        if spans and spans[0][2] is not None:
            out[name] = float(spans[0][2])
    lines = [s[2] for s in qs.get("rps_lines_start_with_bulletpoint") or () if s[2] is not None]
    if lines:
        out["rps_lines_start_with_bulletpoint"] = sum(map(float, lines)) / len(lines)
    ut1 = qs.get("rps_doc_ut1_blacklist")
    if ut1 and ut1[0][2] is not None:  # any category id means the domain is listed
        out["rps_doc_ut1_blacklist"] = 1.0
    return out
