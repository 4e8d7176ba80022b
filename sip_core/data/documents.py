"""The document record every data stage passes around."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    """One source document.

    `id` is stable across runs (taken from the source when it has one, else derived from the
    source file and line). `meta` keeps source-specific fields; RedPajama-V2 input carries its
    own `quality_signals` there. `signals` is filled by the rule filter (RPv2 signal names).
    """

    id: str
    text: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    signals: dict[str, float] = field(default_factory=dict)
