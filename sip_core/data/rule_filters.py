"""Stage 1 of the unsafe-content filter: RPv2/Gopher quality rules plus a bad-word rule.

Filters follow the datatrove shape: one small class, one `filter(doc)` returning True
(pass), False, or `(False, reason)`. Stages share the `UnsafeStage` interface so a later
LLM judge (stage 2) can be chained after the rules with `run_stages`.
"""

from __future__ import annotations

import abc
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from sip_core.data.documents import Document
from sip_core.data.signals import Lexicons, compute_signals, signals_from_rpv2

FilterResult = bool | tuple[bool, str]


class Filter(abc.ABC):
    name: str = "filter"

    @abc.abstractmethod
    def filter(self, doc: Document) -> FilterResult:
        """True to keep the document; False or (False, reason) to drop it."""


def _outcome(flt: Filter, result: FilterResult) -> tuple[bool, str]:
    if isinstance(result, tuple):
        return result
    return bool(result), ("" if result else flt.name)


class _RangeFilter(Filter):
    """Keeps docs whose signal lies in [lo, hi] (both inclusive, as in RPv2's rules).

    A missing signal passes unless `required`: only the word count is mandatory, the
    other rules cannot judge a doc they have no number for.
    """

    signal: str
    required = False

    def __init__(self, lo: float | None = None, hi: float | None = None):
        self.lo, self.hi = lo, hi

    def filter(self, doc: Document) -> FilterResult:
        value = doc.signals.get(self.signal)
        if value is None:
            return (False, f"{self.name}_missing") if self.required else True
        if self.lo is not None and value < self.lo:
            return False, f"{self.name}<{self.lo:g}"
        if self.hi is not None and value > self.hi:
            return False, f"{self.name}>{self.hi:g}"
        return True


class WordCountFilter(_RangeFilter):
    name, signal, required = "word_count", "rps_doc_word_count", True

    def __init__(self, min_words: int = 50, max_words: int = 100_000):
        super().__init__(min_words, max_words)


class MeanWordLengthFilter(_RangeFilter):
    name, signal = "mean_word_length", "rps_doc_mean_word_length"

    def __init__(self, min_len: float = 3, max_len: float = 10):
        super().__init__(min_len, max_len)


class SymbolWordRatioFilter(_RangeFilter):
    name, signal = "symbol_word_ratio", "rps_doc_symbol_to_word_ratio"

    def __init__(self, max_ratio: float = 0.1):
        super().__init__(None, max_ratio)


class BulletLinesFilter(_RangeFilter):
    name, signal = "bullet_lines", "rps_lines_start_with_bulletpoint"

    def __init__(self, max_frac: float = 0.9):
        super().__init__(None, max_frac)


class Top2GramFilter(_RangeFilter):
    name, signal = "top_2gram", "rps_doc_frac_chars_top_2gram"

    def __init__(self, max_frac: float = 0.2):
        super().__init__(None, max_frac)


def default_quality_filters() -> list[Filter]:
    """The RPv2/Gopher rules in the order the paper's code applies them."""
    return [WordCountFilter(), MeanWordLengthFilter(), SymbolWordRatioFilter(),
            BulletLinesFilter(), Top2GramFilter()]


class UnsafeRule(Filter):
    """True when a document is a likely-unsafe candidate.

    Condition: `ldnoobw_words >= min_badwords` combined with a UT1 domain-blocklist hit.
    The paper's code ANDs the two although its comment says OR; we default to "or"
    because no URL blocklist ships offline (AND would select nothing) and the LLM judge
    of stage 2 confirms every candidate anyway.
    """

    name = "unsafe"

    def __init__(self, min_badwords: int = 5, combine: str = "or"):
        if combine not in ("or", "and"):
            raise ValueError(f"UnsafeRule combine must be 'or' or 'and', got {combine!r}")
        self.min_badwords, self.combine = min_badwords, combine

    def _hits(self, doc: Document) -> tuple[bool, bool]:
        words = doc.signals.get("rps_doc_ldnoobw_words", 0.0) >= self.min_badwords
        return words, doc.signals.get("rps_doc_ut1_blacklist", 0.0) > 0

    def filter(self, doc: Document) -> bool:
        words, url = self._hits(doc)
        return (words or url) if self.combine == "or" else (words and url)

    def reason(self, doc: Document) -> str:
        """Stable counts key naming which conditions fired, e.g. "ldnoobw>=5+ut1"."""
        words, url = self._hits(doc)
        parts = ([f"ldnoobw>={self.min_badwords}"] if words else []) + (["ut1"] if url else [])
        return "+".join(parts)


class SignalAnnotator:
    """Fills `doc.signals`: computed from the text, overridden by RPv2's own signals."""

    def __init__(self, lex: Lexicons):
        self.lex = lex

    def __call__(self, doc: Document) -> Document:
        url = doc.meta.get("url")
        if not url and doc.id.startswith(("http://", "https://")):
            url = doc.id
        signals = compute_signals(doc.text, url, self.lex)
        if doc.meta.get("quality_signals"):
            signals.update(signals_from_rpv2(doc.meta["quality_signals"]))
        doc.signals = signals
        return doc


Label = Literal["unsafe", "rest", "excluded"]


@dataclass(frozen=True)
class Verdict:
    label: Label
    reason: str
    stage: str


class UnsafeStage(abc.ABC):
    """One step of the unsafe filter. Must yield exactly one verdict per input doc,
    lazily, so stages can be chained over a corpus without materialising it."""

    name: str = "stage"

    @abc.abstractmethod
    def run(self, docs: Iterable[Document]) -> Iterator[tuple[Document, Verdict]]: ...


def run_stages(stages: Sequence[UnsafeStage], docs: Iterable[Document]) -> Iterator[tuple[Document, Verdict]]:
    """Chain stages: each later stage sees only docs the previous one labelled "unsafe";
    every other verdict is passed through unchanged. Streams end to end."""
    if not stages:
        raise ValueError("run_stages needs at least one stage")
    stream = stages[0].run(docs)
    for stage in stages[1:]:
        stream = _then(stage, stream)
    return stream


def _then(stage: UnsafeStage, upstream: Iterator[tuple[Document, Verdict]]) -> Iterator[tuple[Document, Verdict]]:
    # Non-unsafe items wait here while the stage pulls its next input; flushing them
    # before each stage result keeps input order for 1:1 stages, and a batching stage
    # only holds back about one batch worth of pass-through items.
    waiting: deque[tuple[Document, Verdict]] = deque()

    def unsafe_only() -> Iterator[Document]:
        for doc, verdict in upstream:
            if verdict.label == "unsafe":
                yield doc
            else:
                waiting.append((doc, verdict))

    for item in stage.run(unsafe_only()):
        while waiting:
            yield waiting.popleft()
        yield item
    for _ in unsafe_only():  # a stage that stopped early must not swallow the rest
        raise RuntimeError(f"stage {stage.name!r} did not consume all its input")
    yield from waiting


class RuleStage(UnsafeStage):
    """Stage 1: annotate signals, exclude low-quality docs, flag bad-word docs unsafe."""

    name = "rules"

    def __init__(self, lex: Lexicons, quality_filters: Sequence[Filter] | None = None,
                 unsafe_rule: UnsafeRule | None = None):
        self.annotate = SignalAnnotator(lex)
        self.quality_filters = list(default_quality_filters() if quality_filters is None else quality_filters)
        self.unsafe_rule = unsafe_rule or UnsafeRule()

    def verdict(self, doc: Document) -> Verdict:
        self.annotate(doc)
        for flt in self.quality_filters:
            ok, reason = _outcome(flt, flt.filter(doc))
            if not ok:
                return Verdict("excluded", reason, self.name)
        if self.unsafe_rule.filter(doc):
            return Verdict("unsafe", self.unsafe_rule.reason(doc), self.name)
        return Verdict("rest", "", self.name)

    def run(self, docs: Iterable[Document]) -> Iterator[tuple[Document, Verdict]]:
        for doc in docs:
            yield doc, self.verdict(doc)


class FilterStats:
    """Running counts of verdicts, per label and per (non-empty) reason."""

    def __init__(self) -> None:
        self.labels: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()

    def update(self, verdict: Verdict) -> None:
        self.labels[verdict.label] += 1
        if verdict.reason:
            self.reasons[verdict.reason] += 1

    def as_dict(self) -> dict[str, object]:
        return {"total": sum(self.labels.values()), "labels": dict(self.labels),
                "reasons": dict(self.reasons)}
