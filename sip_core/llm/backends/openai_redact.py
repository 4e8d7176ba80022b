"""Where the API key must never show: `repr`s, URLs in logs, server error texts."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

NO_KEY = "EMPTY"  # what vLLM accepts when no key is configured


class Secret:
    """A string that does not show itself: repr/str give a placeholder."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


def redact_url(url: str) -> str:
    """Drop user:password@ from a URL (for repr and logs)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def scrub(text: str, key: Secret, limit: int = 200) -> str:
    """One line, at most `limit` characters, without the key."""
    value = key.reveal()
    if value and value != NO_KEY and len(value) >= 4:
        text = text.replace(value, "***")
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
