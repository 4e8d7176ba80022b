"""What the LLM-job tests (tests/augment, tests/judge) share: the smoke config with an optional
OpenAI-compatible role, the smoke corpus's chunks, and readers of the prompts' fenced blocks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sip_core.config import SipConfig, load_config
from sip_core.infra.run_context import RunContext

ROOT = Path(__file__).resolve().parents[1]
# A fenced block: label, the request's fence token, body, and the closing marker with the same token.
_BLOCK = re.compile(r"<<<BEGIN ([A-Z0-9 ]+?) ([0-9a-f]{10})>>>\n?(.*?)\n?<<<END \1 \2>>>", re.S)
_ANSWER_OPENER = re.compile(r"<<<BEGIN REWRITTEN CONTINUATION [0-9a-f]{10}>>>\n")


def user_text(messages) -> str:
    """The last user message (a prefilled request ends with the assistant's opening)."""
    return next(m["content"] for m in reversed(messages) if m.get("role") == "user")


def blocks(messages) -> dict[str, str]:
    return {name: body for name, _, body in _BLOCK.findall(user_text(messages))}


def outside_blocks(messages) -> str:
    """The user message with every fenced block cut out: what a judge may take as instructions."""
    return _BLOCK.sub("", user_text(messages))


def copy_rewriter(messages) -> str:
    """A rewriter that copies X after its first five words, as a good one does for safe text."""
    x = blocks(messages)["CONTINUATION X"]
    ending = _ANSWER_OPENER.split(user_text(messages))[-1]
    return x[len(ending):] if x.startswith(ending) else x


def smoke_config(root, url=None, *extra) -> SipConfig:
    """configs/smoke.yaml rooted at `root`; with `url`, the rewriter is a fast-retrying openai backend there."""
    role = [f"rewriter.base_url={url}", "rewriter.backend=openai", "rewriter.model=fake", "rewriter.max_retries=4",
            "rewriter.backoff_s=0.01", "rewriter.backoff_max_s=0.05", "rewriter.timeout_s=2"] if url else []
    return load_config(ROOT / "configs" / "smoke.yaml", [f"run.root={root}", *role, *extra])


@pytest.fixture(scope="module")
def chunks(tmp_path_factory):
    """(run root, chunks manifest) of the smoke corpus, prepared once per test module."""
    from sip_core.data.prepare import filter_documents, ingest_documents, materialize_chunks

    root = tmp_path_factory.mktemp("llmjobs")
    env = RunContext(smoke_config(root))
    return root, materialize_chunks(env, filter_documents(env, ingest_documents(env)))
