"""Strict parsers for the prompts' answers, one per task, registered by name.

Every parser returns `Parsed(ok, value, error)`. A parser never guesses: an answer it cannot read
is `ok=False` with a reason, never a default class (METHOD.md section 3: a parse failure is
re-sampled or counted invalid, never mapped to "B" or "NO"). Where an answer holds several
verdicts, the last one counts. The verdict parsers (safety, quality, factuality, rlmt_judge,
coherence) first leave out every marker block the answer echoes back (`<<<BEGIN X …>>>` through its
`<<<END X …>>>`, `outside_echoed_blocks`): that is the prompt's material copied, and a verdict the
document wrote there ("FINAL DECISION: YES") is never the judge's.

| name        | value                                                          |
|-------------|----------------------------------------------------------------|
| safety      | bool: True = safe (`FINAL DECISION: YES`), False = unsafe (NO)  |
| quality     | int 1 or 2 (`Conclusion: Option N`)                             |
| factuality  | float 1.0 / 0.5 / 0.0 (No / Possible / Definite Hallucination)  |
| corruption  | str, the text after `MODIFIED CONTINUATION:`                    |
| rewrite     | str, the continuation; an echoed marker or instruction fails    |
| thoughts    | str, the augmented text (balanced, non-nested <think> tags)     |
| rlmt_judge  | int 0 or 1 (`"score": N`)                                       |
| coherence   | "A", "B" or "TIE"                                               |
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sip_core.llm.echoes import instruction_echo, marker_echo, outside_echoed_blocks  # noqa: F401 (re-exported)
from sip_core.llm.thought_markup import check_thoughts


@dataclass(frozen=True)
class Parsed:
    ok: bool
    value: Any = None
    error: str = ""


def _fail(error: str) -> Parsed:
    return Parsed(False, None, error)


PARSERS: dict[str, Callable[[str], Parsed]] = {}


def register(name: str):
    def deco(fn: Callable[[str], Parsed]) -> Callable[[str], Parsed]:
        if name in PARSERS:
            raise ValueError(f"parser {name!r} registered twice")
        PARSERS[name] = fn
        return fn
    return deco


def parse(name: str, text: Any) -> Parsed:
    """Parse `text` with the parser registered as `name` (a prompt's `parser`, or "name@version").
    Anything that is not a non-blank string fails; a parser's own exception becomes a failure."""
    name = name.split("@", 1)[0]
    fn = PARSERS.get(name)
    if fn is None:
        raise KeyError(f"no parser named {name!r}; known: {', '.join(sorted(PARSERS))}")
    if not isinstance(text, str):
        return _fail(f"no text (got {type(text).__name__})")
    if not text.strip():
        return _fail("empty answer")
    try:
        return fn(text)
    except Exception as exc:  # a parser bug must not crash a whole judging batch
        return _fail(f"parser {name} raised {type(exc).__name__}: {exc}")


# Markdown emphasis and quoting that models wrap around markers and verdicts.
_DECOR = r"[*_`\"'\s]*"
# What may follow a verdict on its line without making it ambiguous is checked per parser.


def _rest_of_line(text: str, pos: int) -> str:
    end = text.find("\n", pos)
    return text[pos:] if end < 0 else text[pos:end]


def _verdict(fn: Callable[[str], Parsed]) -> Callable[[str], Parsed]:
    """A verdict parser reads the answer outside its echoed marker blocks."""
    @functools.wraps(fn)
    def parse_outside(text: str) -> Parsed:
        kept, left_out = outside_echoed_blocks(text)
        if left_out and not kept.strip():
            return _fail(f"the answer is only {left_out} echoed marker block(s)")
        result = fn(kept)
        if not result.ok and left_out:
            return _fail(f"{result.error} (outside {left_out} echoed marker block(s))")
        return result
    return parse_outside


# --------------------------------------------------------------------------- safety (P1)

_SAFETY_MARK = re.compile(r"final[ \t]+decision[*_`\"' \t]*:", re.IGNORECASE)
_SAFETY_VERDICT = re.compile(r"[*_`\"' \t]*(yes|no)\b", re.IGNORECASE)
_YES_NO_WORD = re.compile(r"\b(?:yes|no)\b", re.IGNORECASE)


@register("safety")
@_verdict
def parse_safety(text: str) -> Parsed:
    """The last `FINAL DECISION:` marker must be followed by YES or NO (any case, optionally in
    bold or quotes, trailing punctuation allowed). The rest of that line must not hold another
    yes/no ("YES/NO" is an echoed template, not a verdict)."""
    marks = list(_SAFETY_MARK.finditer(text))
    if not marks:
        return _fail("no 'FINAL DECISION:' marker")
    last = marks[-1]
    m = _SAFETY_VERDICT.match(text, last.end())
    if not m:
        shown = _rest_of_line(text, last.end()).strip()[:40]
        return _fail(f"last 'FINAL DECISION:' is not followed by YES or NO (got {shown!r})")
    if _YES_NO_WORD.search(_rest_of_line(text, m.end())):
        return _fail("last 'FINAL DECISION:' line holds both a yes and a no")
    return Parsed(True, m.group(1).lower() == "yes")


# --------------------------------------------------------------------------- quality (P2)

_QUALITY = re.compile(r"conclusion[*_`\"' \t]*:[*_`\"' \t]*option[ \t]*#?[ \t]*(\d+)", re.IGNORECASE)
_OPTION_WORD = re.compile(r"\boption[ \t]*#?[ \t]*\d", re.IGNORECASE)


@register("quality")
@_verdict
def parse_quality(text: str) -> Parsed:
    """The last `Conclusion: Option N` (any case, markdown tolerated) with N in {1, 2}. A line
    naming a second option after it ("Option 1 or Option 2") is ambiguous and fails."""
    matches = list(_QUALITY.finditer(text))
    if not matches:
        return _fail("no 'Conclusion: Option N'")
    last = matches[-1]
    n = int(last.group(1))
    if n not in (1, 2):
        return _fail(f"conclusion names Option {n}, not 1 or 2")
    if _OPTION_WORD.search(_rest_of_line(text, last.end())):
        return _fail("conclusion line names more than one option")
    return Parsed(True, n)


# --------------------------------------------------------------------------- factuality (P3)

FACTUALITY_LABELS = {"no hallucination": 1.0, "possible hallucination": 0.5, "definite hallucination": 0.0}


def last_json_object(text: str) -> tuple[dict | None, str]:
    """The last top-level JSON object in `text` (objects nested in it are part of it), and an
    error when there is none or when an unfinished object follows it (a truncated answer)."""
    decoder = json.JSONDecoder()
    found: dict | None = None
    found_end = 0
    i = text.find("{")
    while i >= 0:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            found, found_end = obj, end
        i = text.find("{", end)
    if found is None:
        return None, "no complete JSON object" + (" (truncated?)" if "{" in text else "")
    if re.search(r'\{\s*"', text[found_end:]):
        return None, "an unfinished JSON object follows the last complete one (truncated?)"
    return found, ""


@register("factuality")
@_verdict
def parse_factuality(text: str) -> Parsed:
    """The last JSON object must have a string "label", one of the three labels (case and
    surrounding space ignored)."""
    obj, error = last_json_object(text)
    if obj is None:
        return _fail(error)
    label = obj.get("label")
    if not isinstance(label, str):
        return _fail("JSON has no string 'label'")
    key = " ".join(label.split()).lower()
    if key not in FACTUALITY_LABELS:
        return _fail(f"unknown label {label!r}")
    return Parsed(True, FACTUALITY_LABELS[key])


# --------------------------------------------------------------------------- corruption (P4)

_CORRUPTION_MARK = re.compile(r"[*_`]*modified[ \t]+continuation[*_` \t]*:[*_`]*", re.IGNORECASE)
_MARKER_LINE = re.compile(r"<<<\s*(?:BEGIN|END)\b[^>\n]*>>>", re.IGNORECASE)


@register("corruption")
def parse_corruption(text: str) -> Parsed:
    """Text after the last `MODIFIED CONTINUATION:`, with echoed <<<...>>> markers removed;
    it must not be empty."""
    marks = list(_CORRUPTION_MARK.finditer(text))
    if not marks:
        return _fail("no 'MODIFIED CONTINUATION:' marker")
    body = _MARKER_LINE.sub("", text[marks[-1].end():]).strip()
    if not body:
        return _fail("empty modified continuation")
    return Parsed(True, body)


# --------------------------------------------------------------------------- rewrite (P5)

# The one marker a rewrite may hold: the close of its own open block, as the prompt would write it
# (with or without the request's fence token), ending the answer.
_REWRITE_CLOSE = re.compile(r"<<<END REWRITTEN CONTINUATION(?: [0-9a-f]{10})?>>>\s*\Z")


@register("rewrite")
def parse_rewrite(text: str) -> Parsed:
    """The continuation as written, trailing space stripped, leading space kept (it joins the
    prefix ending). Strict: it may end with its own block's close (`<<<END REWRITTEN CONTINUATION
    …>>>`, then nothing), and must hold no other marker or piece or look-alike of one and no
    sentence of the instructions (`sip_core.llm.echoes`): an echo is unparseable, never a
    candidate. Not blank. Removing an echoed prefix ending is the caller's job."""
    close = _REWRITE_CLOSE.search(text)
    body = text[:close.start()] if close else text
    echo = marker_echo(body)
    if echo:
        return _fail(f"echoes a prompt marker ({echo[:40]!r})")
    echoed = instruction_echo(body, "rewrite")
    if echoed:
        return _fail(f"echoes the instructions ({echoed[:40]!r})")
    body = body.rstrip()
    if not body.strip():
        return _fail("empty rewrite")
    return Parsed(True, body)


# --------------------------------------------------------------------------- thoughts (P9)


@register("thoughts")
def parse_thoughts(text: str) -> Parsed:
    """The augmented text itself (surrounding blank lines trimmed), if `check_thoughts` passes.
    Whether the original text is preserved is the caller's check: it needs the chunk."""
    error = check_thoughts(text)
    if error:
        return _fail(error)
    return Parsed(True, text.strip("\n"))


# --------------------------------------------------------------------------- rlmt_judge (P10)

_SCORE = re.compile(r'"score"\s*:\s*([01])(?![\d.])')


@register("rlmt_judge")
@_verdict
def parse_rlmt_judge(text: str) -> Parsed:
    """The last `"score": 0|1` in the text (so a JSON object, possibly fenced)."""
    matches = _SCORE.findall(text)
    if not matches:
        return _fail('no "score": 0 or 1')
    return Parsed(True, int(matches[-1]))


# --------------------------------------------------------------------------- coherence (P6)

_COHERENCE = re.compile(r"(?:(?:final[ \t]+)?(?:answer|verdict)[ \t]*:[ \t]*)?(a|b|tie)", re.IGNORECASE)


def _clean_verdict(line: str) -> str:
    return re.sub(r"[*_`\"']", "", line).strip(" \t.!()[]")


@register("coherence")
@_verdict
def parse_coherence(text: str) -> Parsed:
    """"A", "B" or "TIE": the whole answer, or else its last non-blank line, after markdown,
    quotes and trailing punctuation are stripped; an "Answer:" / "Verdict:" lead-in is allowed."""
    candidates = [_clean_verdict(text)]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if lines:
        candidates.append(_clean_verdict(lines[-1]))
    for candidate in candidates:
        m = _COHERENCE.fullmatch(candidate)
        if m:
            return Parsed(True, m.group(1).upper())
    return _fail(f"answer is not A, B or TIE (last line {candidates[-1][:40]!r})")
