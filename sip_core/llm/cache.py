"""The one runner every LLM job goes through.

`CachedLLM.run` looks every request up by its key, sends only the missing ones, parses the answers
with the prompt's strict parser, and writes each result to the cache as it arrives (flushed at
least every `flush_s` seconds), so a rerun, a retry or a resume after `kill -9` repeats no stored
call. Unparseable answers are stored as such and re-asked with a new seed, never scored.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

from sip_core.infra.artifacts import Provenance
from sip_core.llm.judgment_cache import JudgmentCache
from sip_core.llm.types import LLMBackend, LLMRequest, LLMResult, Progress

__all__ = ["CachedLLM", "CallsFailed", "Judgment", "JudgmentCache", "failed_share", "require_answers"]


@dataclass
class Judgment:
    """One answered request: raw text, parsed value (None unless status == "ok")."""

    key: str
    prompt: str
    text: str | None
    value: Any
    status: str  # ok | unparseable | error
    error: str | None = None
    cached: bool = False
    seed: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class CallsFailed(RuntimeError):
    """A job whose model calls failed beyond its allowed share: nothing built from them is committed."""


def require_answers(job: str, judgments: Sequence[Judgment], max_failed_share: float | None = None) -> int:
    """The number of failed or unparseable judgments; raises CallsFailed when more than
    `max_failed_share` of them failed (None: only when every one did). A failure is never data:
    the caller keeps failed items queued, never marks them done."""
    failed = [j for j in judgments if not j.ok]
    too_many = (len(failed) == len(judgments) if max_failed_share is None
                else len(failed) > max_failed_share * len(judgments))
    if judgments and failed and too_many:
        first = next((j.error for j in failed if j.error), failed[0].status)
        raise CallsFailed(f"{job}: {len(failed)} of {len(judgments)} model calls failed (first: {first}); "
                          "nothing was committed and the items stay queued for the next run")
    return len(failed)


def failed_share(llm) -> float | None:
    """The failed share `llm`'s jobs allow (`run.max_failed_share`; a test's fake judge: None)."""
    return getattr(llm, "max_failed_share", None)


def _parse(request: LLMRequest, text: str | None) -> tuple[str, Any, str | None]:
    from sip_core.llm.parsers import parse
    from sip_core.llm.prompting import PromptError, load_prompt

    base = request.prompt.split("@", 1)[0]
    try:
        name = load_prompt(base).parser  # a task's prompt variant (judge_quality) parses like the task (quality)
    except PromptError:  # raw requests ("raw@0") and prompts no longer shipped
        name = base
    parsed = parse(name, text or "")
    return ("ok", parsed.value, None) if parsed.ok else ("unparseable", None, parsed.error)


class CachedLLM:
    """A backend behind the judgment cache. Counts hits, misses and calls for reports."""

    def __init__(self, backend: LLMBackend, cache: JudgmentCache, provenance: Provenance = Provenance(),
                 flush_s: float = 1.0, flush_rows: int = 64, sampling_overrides: dict[str, Any] | None = None,
                 max_failed_share: float | None = None):
        self.backend, self.cache, self.provenance = backend, cache, provenance
        self.max_failed_share = max_failed_share  # run.max_failed_share: what every job's require_answers allows
        self.flush_s, self.flush_rows = flush_s, flush_rows
        # Config-level sampling overrides are applied here, before keying, so that changing one
        # can never return answers cached under other sampling parameters.
        self.overrides = dict(sampling_overrides or {})
        self.hits = self.misses = self.calls = 0
        self.failed = 0  # run_parsed's final endpoint errors: answers a rerun still has to ask for

    def _apply(self, req: LLMRequest) -> LLMRequest:
        return replace(req, sampling=req.sampling.override(self.overrides))

    def _row(self, key: str, req: LLMRequest, res: LLMResult) -> dict[str, Any]:
        status, value, parse_error = ("error", None, None) if not res.ok else _parse(req, res.text)
        return {"key": key, "model_id": self.backend.model_id, "prompt": req.prompt,
                "messages_json": json.dumps([dict(m) for m in req.messages]),
                "sampling_json": json.dumps(asdict(req.sampling)), "seed": req.sampling.seed,
                "raw_output": res.text, "parsed_json": json.dumps(value), "status": status,
                "parse_error": parse_error, "error": res.error, "prompt_tokens": res.prompt_tokens,
                "completion_tokens": res.completion_tokens, "latency_s": res.latency_s, "attempts": res.attempts,
                "created_at": datetime.now(timezone.utc), "flow_run_id": self.provenance.flow_run_id,
                "task_run_id": self.provenance.task_run_id}

    def run(self, requests: Sequence[LLMRequest], progress: Progress | None = None) -> list[Judgment]:
        requests = [self._apply(r) for r in requests]
        keys = [r.cache_key(self.backend.model_id) for r in requests]
        stored = self.cache.lookup(keys)
        todo: dict[str, LLMRequest] = {}
        for key, req in zip(keys, requests):
            if key not in stored and key not in todo:
                todo[key] = req
        counts: dict[tuple[str, str], list[int]] = {}
        for key, req in zip(keys, requests):
            c = counts.setdefault((req.prompt, self.backend.model_id), [0, 0])
            c[0 if key in stored else 1] += 1
        self.hits += len(requests) - len(todo)
        self.misses += len(todo)
        if progress and len(requests) > len(todo):
            progress(len(requests) - len(todo))
        fresh = self._call(list(todo.items()), progress)
        self.cache.record_lookups({k: (h, m) for k, (h, m) in counts.items()})
        rows = {**stored, **fresh}
        out = []
        for key, req in zip(keys, requests):
            row = rows[key]
            out.append(Judgment(key=key, prompt=req.prompt, text=row["raw_output"],
                                value=json.loads(row["parsed_json"]) if row["parsed_json"] else None,
                                status=row["status"], error=row["error"] or row["parse_error"],
                                cached=key in stored, seed=req.sampling.seed))
        return out

    def _call(self, items: list[tuple[str, LLMRequest]], progress: Progress | None) -> dict[str, dict]:
        if not items:
            return {}
        self.calls += len(items)
        done: dict[str, dict] = {}
        pending: list[dict] = []
        last = time.monotonic()

        def on_result(index: int, result: LLMResult) -> None:
            nonlocal last
            key, req = items[index]
            row = self._row(key, req, result)
            done[key] = row
            pending.append(row)
            if len(pending) >= self.flush_rows or time.monotonic() - last >= self.flush_s:
                self.cache.store(pending)
                pending.clear()
                last = time.monotonic()

        results = self.backend.generate([req for _, req in items], progress=progress, on_result=on_result)
        for index, result in enumerate(results):  # backends without streaming results land here
            if items[index][0] not in done:
                on_result(index, result)
        self.cache.store(pending)
        return done

    def run_parsed(self, requests: Sequence[LLMRequest], parse_retries: int,
                   progress: Progress | None = None, error_retries: int = 1,
                   error_backoff_s: float = 2.0) -> list[Judgment]:
        """Like run, but an unparseable answer is asked again with a new seed, up to parse_retries
        times, and an endpoint error (after the backend's own retries) is asked again as it was,
        after a backoff, up to error_retries times (a client error such as HTTP 400/401/403/404 is
        an answer about the request, never re-asked). What still fails stays failed: callers count
        it, never score it, and never mark its item done."""
        out = self.run(requests, progress)
        current = list(requests)
        parse_round = error_round = 0
        while True:
            unparsed = [i for i, j in enumerate(out) if j.status == "unparseable"] \
                if parse_round < parse_retries else []
            errored = [i for i, j in enumerate(out) if j.status == "error" and not client_error(j.error)] \
                if error_round < error_retries else []
            if not unparsed and not errored:
                self.failed += sum(j.status == "error" for j in out)
                return out
            if unparsed:
                parse_round += 1
                for i in unparsed:
                    current[i] = _reseed(requests[i], parse_round)
            if errored:  # errors are never cached answers: the same request is sent again
                time.sleep(min(30.0, error_backoff_s * 2 ** error_round))
                error_round += 1
            retry = unparsed + errored
            for i, judgment in zip(retry, self.run([current[i] for i in retry])):
                out[i] = judgment


_CLIENT_ERROR = re.compile(r"\bHTTP 4(?!08|29)\d\d\b")


def client_error(error: str | None) -> bool:
    """An endpoint's answer that the request itself is wrong (bad request, auth, unknown model): asking
    again cannot help. 408 (timeout) and 429 (rate limit) are not client errors here."""
    return bool(error and _CLIENT_ERROR.search(error))


def _reseed(req: LLMRequest, attempt: int) -> LLMRequest:
    base = req.sampling.seed or 0
    return replace(req, sampling=req.sampling.with_seed(base + 1_000_003 * attempt))
