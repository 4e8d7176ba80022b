"""ProxyJudgeBackend: a deterministic, offline STAND-IN for a strong judge model. It is a proxy.

For runs with no strong model (tests, laptops, CI) it answers the judge prompts (safety, quality,
factuality, coherence, rlmt_judge) from cheap text statistics and, for quality, a small LM's
likelihood. It reads `request.inputs` (the template's fields), never the rendered messages, and
writes its answer in the prompt's exact output format, so the real parsers, cache and scoring run
unchanged. It writes no free text: rewrite and corruption requests get an error result; thought insertion
is answered by a rule (a plan naming the next sentence's content words) so offline runs have gated
thought data.

What each judge does (all thresholds are fields of `ProxySettings`):

- safety: LDNOOBW and Surge-profanity counts over the text (`sip_core.data.signals`); badness =
  LDNOOBW terms + 0.5 x Surge terms + 1 if any Surge term is severe; NO at or above a threshold.
- quality (pairwise): one score per option, computed from that option alone (plus the prefix),
  never from its position: distinct 2/3-gram ratios, repeated 4-grams and lines (loops), mean word
  length, share of tokens without letters, word-order plausibility (a sentence end followed by a
  lowercase word, a capitalised function word mid-sentence, impossible function-word pairs), bad
  words, long copies of the prefix; plus, with `use_lm`, the mean token log-likelihood of the
  option given the end of the prefix under a small LM (default the bundled SmolLM2-135M-Instruct
  on CPU; bf16 autocast where the CPU has native bf16, fp32 elsewhere, since emulated bf16 is ~4x
  slower; the choice is part of `model_id`; batched, memoised by text hash). Equal scores are
  broken by a hash of the option texts, never by position.
- factuality: numbers and mid-sentence capitalised words of the candidate that appear nowhere in
  prefix + reference count against it; their weight picks No / Possible / Definite Hallucination.
- rlmt_judge: 1 when the content-word F1 between prediction and reference reaches a threshold.
- coherence: the less repetitive continuation wins; TIE when the difference is small.

Layout: `proxy_judges` writes each prompt's answer, `proxy_lm` scores likelihoods,
`proxy_text_stats` holds the text statistics; this module routes requests to them.

Determinism: answers depend only on the inputs and the settings. The sampling seed and
temperature are ignored, so re-asking with a new seed returns the same answer (an unparseable
answer cannot happen). LM scores are memoised per text, and each call scores its new texts in an
order that depends only on the set of texts, so swapping the options of a request gives exactly
the same scores. (The same text padded into a different batch could differ in float noise; scores
are rounded to 1e-4 nats, and the DuckDB cache keeps the first answer anyway.) `model_id`
("proxy:<version>:<scoring LM>", plus a settings hash when settings differ from the defaults)
changes whenever the answers could. `cfg.device` "auto" means CPU
here (CPU numerics are reproducible); name "cuda" explicitly to score on a GPU.

Without the LM (`use_lm=False`) quality has no topic signal: fluent text from another document is
a coin flip against the true suffix (67/140 in a C4 check), while shuffled or looping text loses
(200/200). With the LM the true suffix also beat the other document's suffix in 16/16.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

from sip_core.config import LLMConfig
from sip_core.data.signals import Lexicons
from sip_core.llm.backends.proxy_judges import (ProxySettings, coherence_answer, factuality_answer, quality_answer,
                                                quality_features, rlmt_answer, safety_answer, thoughts_answer)
from sip_core.llm.backends.proxy_lm import LikelihoodScorer, pick_lm_dtype
from sip_core.llm.backends.proxy_text_stats import order_penalty, repetition, text_hash, token_f1
from sip_core.llm.types import LLMBackend, LLMRequest, LLMResult, Progress, ResultHook

__all__ = ["JUDGE_PROMPTS", "PROXY_VERSION", "ProxyJudgeBackend", "ProxySettings", "order_penalty", "repetition",
           "token_f1"]

PROXY_VERSION = "v1"
JUDGE_PROMPTS = ("safety", "quality", "factuality", "coherence", "rlmt_judge")
# The template fields each prompt the proxy answers must carry.
_FIELDS = {"safety": ("text",), "quality": ("prefix", "option_1", "option_2"),
           "factuality": ("prefix", "reference", "continuation"),
           "coherence": ("continuation_a", "continuation_b"),
           "rlmt_judge": ("reference", "prediction"), "thoughts": ("text",)}


class ProxyJudgeBackend(LLMBackend):
    """Deterministic offline PROXY judge (see the module docstring). Not a language model judge:
    its answers come from text statistics and, for quality, a small LM's likelihood."""

    kind = "proxy"

    def __init__(self, cfg: LLMConfig | None = None, *, use_lm: bool = True,
                 settings: ProxySettings | None = None, wordlists: str | Path | None = None,
                 lm_cache_dir: str | None = None):
        self.cfg = cfg or LLMConfig(backend="proxy")
        self.settings = s = settings or ProxySettings()
        self.use_lm = use_lm
        self.lm_ref = self.cfg.model if use_lm else "none"
        self.device = "cpu" if self.cfg.device == "auto" else self.cfg.device
        self._wordlists = wordlists
        self._lexicons: Lexicons | None = None
        self._lexicon_error: str | None = None
        self.lm_dtype = pick_lm_dtype(s.lm_dtype, self.device) if use_lm else "none"
        self.lm = LikelihoodScorer(self.lm_ref, lm_cache_dir, self.device, self.lm_dtype,
                                   context_tokens=s.lm_context_tokens, option_tokens=s.lm_option_tokens,
                                   batch_size=self.cfg.batch_size)
        model_id = f"proxy:{PROXY_VERSION}:{self.lm_ref}" + (f":{self.lm_dtype}" if use_lm else "")
        if s != ProxySettings():
            blob = json.dumps(dataclasses.asdict(s), sort_keys=True)
            model_id += f":{text_hash(blob)[:8]}"
        self.model_id = model_id

    def lexicons(self) -> Lexicons:
        """The safety word lists, loaded once; RuntimeError (every time) when they are missing."""
        if self._lexicons is None and self._lexicon_error is None:
            try:
                if self._wordlists is None:
                    from sip_core.config import FilterConfig, resolve_wordlists

                    self._wordlists = resolve_wordlists(FilterConfig())
                self._lexicons = Lexicons.load(self._wordlists)
            except FileNotFoundError as exc:
                self._lexicon_error = f"proxy judge needs the safety word lists: {exc}"
        if self._lexicons is None:
            raise RuntimeError(self._lexicon_error)
        return self._lexicons

    def lm_scores(self, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        """Mean log-likelihood (nats per token) of each continuation given the end of its context."""
        return self.lm.scores(pairs)

    def quality_features(self, prefix: str, option: str) -> dict[str, float]:
        """The LM-free parts of an option's quality score (no word lists: no bad-words term,
        and `model_id` says nothing)."""
        try:
            lexicons = self.lexicons()
        except RuntimeError:
            lexicons = None
        return quality_features(prefix, option, self.settings, lexicons)

    def _quality_scores(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, dict[str, float]]]:
        feats = [self.quality_features(p, o) for p, o in requests]
        if not self.use_lm:
            return [(round(f["total"], 6), f) for f in feats]
        out = []
        for f, lp in zip(feats, self.lm_scores(requests)):
            f["lm_logprob"] = lp if lp is not None else -20.0
            out.append((round(f["total"] + self.settings.lm_weight * f["lm_logprob"], 6), f))
        return out

    # ------------------------------------------------------------------ backend API

    def _check(self, req: LLMRequest) -> str:
        name = req.prompt.split("@", 1)[0]
        if name not in _FIELDS:
            raise ValueError(f"proxy judge cannot answer {req.prompt}")
        for field in _FIELDS[name]:
            if field not in req.inputs or req.inputs[field] is None:
                raise ValueError(f"proxy judge: request for {req.prompt} lacks input {field!r}")
        return name

    def _answer_one(self, name: str, inp) -> str:
        if name == "safety":
            return safety_answer(inp, self.settings, self.lexicons())
        answer = {"factuality": factuality_answer, "rlmt_judge": rlmt_answer, "coherence": coherence_answer,
                  "thoughts": thoughts_answer}[name]
        return answer(inp, self.settings)

    def _answer_quality(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        """All quality requests at once, so the LM scores their options in shared batches."""
        pairs = []
        for req in requests:
            prefix = str(req.inputs["prefix"])
            pairs += [(prefix, str(req.inputs["option_1"])), (prefix, str(req.inputs["option_2"]))]
        try:
            scored = self._quality_scores(pairs)
            return [LLMResult(text=quality_answer(scored[2 * j:2 * j + 2], (pairs[2 * j][1], pairs[2 * j + 1][1]),
                                                  self.use_lm))
                    for j in range(len(requests))]
        except Exception as exc:  # noqa: BLE001 - e.g. the scoring LM failed to load
            error = f"proxy quality judge failed: {exc}".splitlines()[0]
            return [LLMResult(text=None, error=error) for _ in requests]

    def answer(self, requests: Sequence[LLMRequest]) -> list[LLMResult]:
        """Synchronous core of `agenerate`: one result per request, in order."""
        t0 = time.perf_counter()
        results: list[LLMResult | None] = [None] * len(requests)
        quality: list[int] = []
        for i, req in enumerate(requests):
            try:
                name = self._check(req)
                if name == "quality":
                    quality.append(i)
                    continue
                results[i] = LLMResult(text=self._answer_one(name, req.inputs))
            except Exception as exc:  # noqa: BLE001 - one bad request must not sink the batch
                results[i] = LLMResult(text=None, error=str(exc) or type(exc).__name__)
        if quality:
            for i, res in zip(quality, self._answer_quality([requests[i] for i in quality])):
                results[i] = res
        latency = (time.perf_counter() - t0) / max(1, len(requests))
        for res in results:
            res.latency_s = latency  # type: ignore[union-attr]
        return results  # type: ignore[return-value]

    async def agenerate(self, requests: Sequence[LLMRequest], progress: Progress | None = None,
                        on_result: ResultHook | None = None) -> list[LLMResult]:
        results = await asyncio.to_thread(self.answer, list(requests))
        if on_result:
            for i, res in enumerate(results):
                on_result(i, res)
        if progress and results:
            progress(len(results))
        return results
