"""Echoes of a prompt in a model's free-text answer: its fence markers, or its instructions.

A free-text answer (a rewrite) that holds a `<<<BEGIN …>>>` / `<<<END …>>>` marker, a piece of one, or
a look-alike of one, or that repeats a sentence of the instructions, is the model talking back to the
prompt, not doing the task: the parser that reads such answers fails them (METHOD §3: a parse failure
is re-sampled or counted invalid, never used).
"""

from __future__ import annotations

import functools
import re

# One "<" or ">" to a reader, as the prompt renderer counts them (sip_core.llm.prompting.defang):
# ASCII, fullwidth, small-form, angle quotes and brackets, HTML entities; "≪"/"≫" count as two and
# "⋘"/"⋙" as three. Invisible characters and single spaces may sit between them.
_OPEN_UNIT = r"(?:[<\uFF1C\uFE64\u2039\u00AB\u2329\u27E8\u3008\u276E\u226A\u22D8]|&(?:lt|#0*60|#x0*3c);)"
_CLOSE_UNIT = r"(?:[>\uFF1E\uFE65\u203A\u00BB\u232A\u27E9\u3009\u276F\u226B\u22D9]|&(?:gt|#0*62|#x0*3e);)"
_GAP = r"[\s\u00AD\u180E\u200B-\u200F\u202A-\u202E\u2060-\u2064\uFEFF]?"
_DOUBLE = "\u226A\u226B\u22D8\u22D9"  # one character that reads as two or three angles
# A fence marker or a piece of one: two or more opening angles then BEGIN/END (any case), or an
# upper-case BEGIN/END label closed by two or more closing angles (`BEGIN CONTEXT C 3f9a…>>`).
_MARKER_ECHO = re.compile(
    rf"(?:(?:{_OPEN_UNIT}{_GAP}){{2,}}|[\u226A\u22D8]{_GAP})\s*(?:BEGIN|END)\b"
    rf"|(?-i:\b(?:BEGIN|END) [A-Z0-9][A-Z0-9 ]{{0,60}}?(?: [0-9a-f]{{10}})?)\s*(?:{_CLOSE_UNIT}{_GAP}){{2,}}"
    rf"|(?-i:\b(?:BEGIN|END) [A-Z0-9][A-Z0-9 ]{{0,60}}?(?: [0-9a-f]{{10}})?)\s*[{_DOUBLE}]",
    re.IGNORECASE)


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


@functools.lru_cache(maxsize=None)
def instruction_sentences(prompt_name: str) -> tuple[str, ...]:
    """A prompt's own sentences (system and user text outside its data blocks) of four or more
    words, as lower-case words."""
    from sip_core.llm.prompting import load_prompt

    prompt = load_prompt(prompt_name)
    text = "\n".join(t for t in (prompt.system, prompt.user) if t)
    text = re.sub(r"<<<BEGIN [^>]*>>>.*?(?:<<<END [^>]*>>>|\Z)", "\n", text, flags=re.DOTALL)
    text = re.sub(r"\{[A-Za-z_]+\}", "\n", text)  # a field value splits the sentence around it
    sentences = re.split(r"(?<=[.:;])\s+|\n\s*(?:- )?", text)
    return tuple(sorted({w for w in map(_words, sentences) if len(w.split()) >= 4}))


def marker_echo(text: str) -> str | None:
    """The first fence marker, piece of one or look-alike of one in `text`, or None."""
    m = _MARKER_ECHO.search(text)
    return m.group(0).strip() if m else None


def instruction_echo(text: str, prompt_name: str) -> str | None:
    """The first of the prompt's instruction sentences that `text` repeats (word for word, case,
    punctuation and spacing aside), or None."""
    words = f" {_words(text)} "
    return next((s for s in instruction_sentences(prompt_name) if f" {s} " in words), None)


# A prompt marker as an answer may echo it: BEGIN/END, a label, the request's fence token if kept.
_ECHO_MARKER = re.compile(r"<<<[ \t]*(BEGIN|END)[ \t]+([A-Z0-9]+(?:[ \t]+[A-Z0-9]+)*?)(?:[ \t]+([0-9a-f]{10}))?[ \t]*>>>",
                          re.IGNORECASE)


def outside_echoed_blocks(text: str) -> tuple[str, int]:
    """(`text` with each echoed marker block replaced by a line break, how many were left out).
    A block runs from a `<<<BEGIN X>>>` to the next `<<<END X>>>` of the same label, markers
    included; a BEGIN that carries a fence token closes only at an END with the same token (a
    tokenless END inside it is the document's own forgery, copied). A BEGIN that never closes and
    an END that opens nothing are left as they are: what surrounds them may be the judge's words."""
    marks = [(m.group(1).upper(), " ".join(m.group(2).upper().split()), (m.group(3) or "").lower(), m.span())
             for m in _ECHO_MARKER.finditer(text)]
    cuts: list[tuple[int, int]] = []
    i = 0
    while i < len(marks):
        kind, label, token, (start, _) = marks[i]
        close = next((j for j in range(i + 1, len(marks)) if marks[j][0] == "END" and marks[j][1] == label
                      and (not token or marks[j][2] == token)), None) if kind == "BEGIN" else None
        if close is None:
            i += 1
            continue
        cuts.append((start, marks[close][3][1]))
        i = close + 1
    if not cuts:
        return text, 0
    out, pos = [], 0
    for start, end in cuts:
        out += [text[pos:start], "\n"]
        pos = end
    out.append(text[pos:])
    return "".join(out), len(cuts)
