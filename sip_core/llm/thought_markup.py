"""The `<think>...</think>` markup of thought-augmented text (prompt P9's answers, RLMT's rollouts):
where the thoughts are, the text without them, and whether the markup is well formed."""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_ANY_THINK_TAG = re.compile(r"<\s*/?\s*think\b[^>]*>", re.IGNORECASE)
_THOUGHT = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def thought_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each `<think>...</think>` span, tags included."""
    return [m.span() for m in _THOUGHT.finditer(text)]


def strip_thoughts(text: str, tidy_space: bool = True) -> str:
    """`text` without its `<think>...</think>` spans.

    With `tidy_space=False` exactly the spans are cut out. With `tidy_space=True` (default) the
    whitespace a teacher adds to set a thought apart is removed too: where a span has whitespace
    on both sides, the shorter of the two runs goes (the one before it on a tie); a span with only
    whitespace before it (after it) takes the run after (before) it. This recovers the original
    chunk for the usual insertions ("a <think>t</think> b" -> "a b",
    "a.\\n\\n<think>t</think> B" -> "a.\\n\\nB"); compare after whitespace normalisation to be safe.
    """
    spans = thought_spans(text)
    if not spans:
        return text
    if not tidy_space:
        return _THOUGHT.sub("", text)
    cuts: list[tuple[int, int]] = []
    for start, end in spans:
        before = start
        while before > 0 and text[before - 1].isspace():
            before -= 1
        after = end
        while after < len(text) and text[after].isspace():
            after += 1
        if before == 0:  # only whitespace before it: take the whitespace after it
            cuts.append((start, after))
        elif after == len(text):  # only whitespace after it: take the whitespace before it
            cuts.append((before, end))
        elif before < start and after > end:
            if after - end < start - before:
                cuts.append((start, after))
            else:
                cuts.append((before, end))
        else:
            cuts.append((start, end))
    out, pos = [], 0
    for start, end in cuts:
        start = max(start, pos)  # runs between adjacent spans are never cut twice
        out.append(text[pos:start])
        pos = max(pos, end)
    out.append(text[pos:])
    return "".join(out)


def check_thoughts(text: str) -> str:
    """Why `text` is not a valid thought-augmented text, or "" when it is: every think tag is
    exactly `<think>` or `</think>`, they alternate open/close starting with open (balanced, not
    nested), no thought is empty, there is at least one, and some original text remains."""
    tags = [m.group(0) for m in _ANY_THINK_TAG.finditer(text)]
    bad = [t for t in tags if t not in (THINK_OPEN, THINK_CLOSE)]
    if bad:
        return f"malformed think tag {bad[0]!r}"
    depth = 0
    for tag in tags:
        if tag == THINK_OPEN:
            if depth:
                return "nested <think>"
            depth = 1
        else:
            if not depth:
                return "</think> without <think>"
            depth = 0
    if depth:
        return "unclosed <think>"
    thoughts = _THOUGHT.findall(text)
    if not thoughts:
        return "no <think>...</think> span"
    if any(not t.strip() for t in thoughts):
        return "empty thought"
    if not strip_thoughts(text).strip():
        return "no original text outside the thoughts"
    return ""
