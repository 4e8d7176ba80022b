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

Determinism: answers depend only on the inputs and the settings. The sampling seed and
temperature are ignored, so re-asking with a new seed returns the same answer (an unparseable
answer cannot happen). LM scores are memoised per text, and each call scores its new texts in an
order that depends only on the set of texts, so swapping the options of a request gives exactly
the same scores. (The same text padded into a different batch could differ in float noise; scores
are rounded to 1e-4 nats, and the DuckDB cache keeps the first answer anyway.) `model_id` ("proxy:<version>:<scoring LM>", plus a settings hash when settings
differ from the defaults) changes whenever the answers could. `cfg.device` "auto" means CPU
here (CPU numerics are reproducible); name "cuda" explicitly to score on a GPU.

Without the LM (`use_lm=False`) quality has no topic signal: fluent text from another document is
a coin flip against the true suffix (67/140 in a C4 check), while shuffled or looping text loses
(200/200). With the LM the true suffix also beat the other document's suffix in 16/16.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sip_core.config import LLMConfig
from sip_core.llm.types import LLMBackend, LLMRequest, LLMResult, Progress, ResultHook
from sip_core.data.signals import Lexicons, compute_signals, normalize_words
from sip_core.llm.backends.proxy_text_stats import (STOPWORDS, _STRIP, _distinct, _entities, _numbers, _repeated_line_frac,
                                     _repeated_ngram_frac, _sha, order_penalty, repetition, token_f1)
from sip_core.infra.models import fast_bf16

PROXY_VERSION = "v1"
JUDGE_PROMPTS = ("safety", "quality", "factuality", "coherence", "rlmt_judge")

# Common English function words. Used for content-word F1 and word-order checks.
@dataclass(frozen=True)
class ProxySettings:
    """Every knob that changes a proxy answer (a change shows up in `model_id`)."""

    # safety
    safety_threshold: float = 3.0       # badness at or above this -> FINAL DECISION: NO
    surge_weight: float = 0.5
    severe_surge: float = 2.5           # Surge severity counted as severe (scale 1-3)
    # quality
    lm_weight: float = 0.3              # score per nat of mean token log-likelihood
    lm_context_tokens: int = 128        # prefix tokens the LM sees (the end of the prefix)
    lm_option_tokens: int = 256         # option tokens scored
    lm_dtype: str = "auto"              # bf16 (autocast), fp32, or auto: bf16 where the hardware
    #                                     has native bf16 (CUDA, AVX512-BF16/AMX CPUs), else fp32
    order_weight: float = 1.0
    badword_weight: float = 0.3
    copy_ngram: int = 8                 # an n-gram this long shared with the prefix is a copy
    # factuality
    possible_at: float = 1.0            # unsupported weight for "Possible Hallucination"
    definite_at: float = 3.0            # ... for "Definite Hallucination"
    entity_weight: float = 0.5          # an unsupported capitalised word (a number counts 1)
    # rlmt_judge
    rlmt_f1: float = 0.2                # related text of the same document scores ~0.15, other documents ~0.02
    # coherence
    tie_margin: float = 0.02
    # thoughts (stand-in teacher)
    thoughts_per_text: int = 4


def _pick_lm_dtype(setting: str, device: str) -> str:
    """bf16 autocast is ~4x slower than fp32 on CPUs that emulate bf16 (e.g. AVX2 only)."""
    if setting in ("bf16", "fp32"):
        return setting
    if setting != "auto":
        raise ValueError(f"lm_dtype must be auto, bf16 or fp32, not {setting!r}")
    return "bf16" if fast_bf16(device) else "fp32"


class ProxyJudgeBackend(LLMBackend):
    """Deterministic offline PROXY judge (see the module docstring). Not a language model judge:
    its answers come from text statistics and, for quality, a small LM's likelihood."""

    kind = "proxy"

    def __init__(self, cfg: LLMConfig | None = None, *, use_lm: bool = True,
                 settings: ProxySettings | None = None, wordlists: str | Path | None = None,
                 lm_cache_dir: str | None = None):
        self.cfg = cfg or LLMConfig(backend="proxy")
        self.settings = settings or ProxySettings()
        self.use_lm = use_lm
        self.lm_ref = self.cfg.model if use_lm else "none"
        self.lm_cache_dir = lm_cache_dir
        self.device = "cpu" if self.cfg.device == "auto" else self.cfg.device
        self._wordlists = wordlists
        self._lexicons: Lexicons | None = None
        self._lexicon_error: str | None = None
        self._lock = threading.Lock()
        self._model = self._tokenizer = None
        self._lm_memo: dict[str, float | None] = {}
        self.lm_dtype = _pick_lm_dtype(self.settings.lm_dtype, self.device) if use_lm else "none"
        model_id = f"proxy:{PROXY_VERSION}:{self.lm_ref}" + (f":{self.lm_dtype}" if use_lm else "")
        if self.settings != ProxySettings():
            blob = json.dumps(dataclasses.asdict(self.settings), sort_keys=True)
            model_id += f":{_sha(blob)[:8]}"
        self.model_id = model_id

    # ------------------------------------------------------------------ resources

    def lexicons(self) -> Lexicons:
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

    def _load_lm(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from sip_core.infra.models import resolve_model

        path = resolve_model(self.lm_ref, self.lm_cache_dir)
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self._model = model.to(self.device).eval()

    def lm_scores(self, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        """Mean log-likelihood (nats per token) of each continuation given the end of its
        context; None for an empty continuation. Memoised by text hash; new texts are scored in
        batches sorted by (length, hash), so a result never depends on the caller's order."""
        keys = [_sha(f"{ctx}\x00{cont}") for ctx, cont in pairs]
        with self._lock:
            todo = {k: p for k, p in zip(keys, pairs) if k not in self._lm_memo}
            if todo:
                self._score_batches(todo)
            return [self._lm_memo[k] for k in keys]

    def _score_batches(self, todo: Mapping[str, tuple[str, str]]) -> None:
        import torch

        self._load_lm()
        tok, s = self._tokenizer, self.settings
        items = []
        for key, (ctx, cont) in todo.items():
            ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"][-s.lm_context_tokens:] if ctx else []
            cont_ids = tok(cont, add_special_tokens=False)["input_ids"][:s.lm_option_tokens]
            if not cont_ids:
                self._lm_memo[key] = None
                continue
            if not ctx_ids:  # something to condition the first token on
                start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
                ctx_ids = [start] if start is not None else []
            items.append((len(ctx_ids) + len(cont_ids), key, ctx_ids, cont_ids))
        items.sort()
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        batch_size = max(1, self.cfg.batch_size)
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            width = max(n for n, *_ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (n, _, ctx_ids, cont_ids) in enumerate(batch):
                ids[row, :n] = torch.tensor(ctx_ids + cont_ids)
                mask[row, :n] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            with torch.inference_mode(), self._autocast():
                # the LM head runs only where a continuation token is predicted, not over the context
                hidden = self._model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
                for row, (n, key, ctx_ids, cont_ids) in enumerate(batch):
                    first = len(ctx_ids)
                    logits = self._model.get_output_embeddings()(hidden[row, first - 1:n - 1]).float()
                    picked = torch.log_softmax(logits, dim=-1).gather(-1, ids[row, first:n, None]).squeeze(-1)
                    # rounded so float noise below the 4th decimal never flips a comparison
                    self._lm_memo[key] = round(float(picked.mean()), 4)

    def _autocast(self):
        import contextlib

        import torch

        if self.lm_dtype != "bf16":
            return contextlib.nullcontext()
        return torch.autocast("cuda" if str(self.device).startswith("cuda") else "cpu", dtype=torch.bfloat16)

    # ------------------------------------------------------------------ judges

    def _safety(self, inp: Mapping[str, Any]) -> str:
        s = self.settings
        sig = compute_signals(str(inp["text"]), None, self.lexicons())
        ld, sc, mx = sig["rps_doc_ldnoobw_words"], sig["sip_surge_count"], sig["sip_surge_max_severity"]
        badness = ld + s.surge_weight * sc + (1.0 if mx >= s.severe_surge else 0.0)
        verdict = "NO" if badness >= s.safety_threshold else "YES"
        return (f"Proxy safety check (word lists, not a model): {ld:g} LDNOOBW terms, {sc:g} Surge terms "
                f"(max severity {mx:g}); badness {badness:.2f}, unsafe at {s.safety_threshold:g}.\n"
                f"FINAL DECISION: {verdict}")

    def quality_features(self, prefix: str, option: str) -> dict[str, float]:
        """The LM-free parts of an option's quality score, each named (higher `total` = better)."""
        s = self.settings
        words = normalize_words(option)
        n = len(words)
        f: dict[str, float] = {"words": float(n)}
        f["distinct"] = (_distinct(words, 2) + _distinct(words, 3)) / 2
        f["loop"] = _repeated_ngram_frac(words) + _repeated_line_frac(option)
        mean_len = sum(map(len, words)) / n if n else 0.0
        f["word_length"] = min(1.0, max(0.0, 3.0 - mean_len, mean_len - 9.0) / 2)
        tokens = option.split()
        alpha = sum(any(c.isalpha() for c in t) for t in tokens) / len(tokens) if tokens else 0.0
        f["non_alpha"] = max(0.0, 0.6 - alpha) / 0.6
        f["order"] = order_penalty(option)
        f["badwords"] = 0.0
        if self._lexicons is not None or self._lexicon_error is None:
            try:
                sig = compute_signals(option, None, self.lexicons())
                f["badwords"] = min(1.0, sig["rps_doc_ldnoobw_words"] / 3)
            except RuntimeError:  # no word lists: this term is left out (model_id says nothing)
                pass
        k = s.copy_ngram
        pre = normalize_words(prefix)
        pre_grams = {tuple(pre[i:i + k]) for i in range(len(pre) - k + 1)}
        grams = [tuple(words[i:i + k]) for i in range(n - k + 1)]
        f["copy"] = sum(g in pre_grams for g in grams) / len(grams) if grams else 0.0
        f["too_short"] = 1.0 if n < 3 else 0.0
        f["total"] = (f["distinct"] - f["loop"] - 0.5 * f["word_length"] - 0.5 * f["non_alpha"]
                      - s.order_weight * f["order"] - s.badword_weight * f["badwords"] - 0.5 * f["copy"]
                      - 2.0 * f["too_short"])
        return f

    def _quality_scores(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, dict[str, float]]]:
        feats = [self.quality_features(p, o) for p, o in requests]
        if not self.use_lm:
            return [(round(f["total"], 6), f) for f in feats]
        lms = self.lm_scores(requests)
        out = []
        for f, lp in zip(feats, lms):
            f["lm_logprob"] = lp if lp is not None else -20.0
            out.append((round(f["total"] + self.settings.lm_weight * f["lm_logprob"], 6), f))
        return out

    @staticmethod
    def _describe(f: Mapping[str, float]) -> str:
        keys = ("distinct", "loop", "order", "word_length", "non_alpha", "badwords", "copy", "lm_logprob")
        return ", ".join(f"{k} {f[k]:.3f}" for k in keys if k in f)

    def _quality_answer(self, scored: list[tuple[float, dict[str, float]]], texts: tuple[str, str]) -> str:
        (s1, f1), (s2, f2) = scored
        if s1 != s2:
            winner = 1 if s1 > s2 else 2
            why = "higher score"
        else:  # a tie: decided by the texts' hashes, so the same candidate wins in either order
            h1, h2 = _sha(texts[0]), _sha(texts[1])
            winner = 1 if h1 <= h2 else 2
            why = "equal scores, tie broken by text hash"
        return (f"Proxy quality judge (statistics{' + LM likelihood' if self.use_lm else ''}, not a model "
                f"judgment).\nOption 1: score {s1:.4f} ({self._describe(f1)}).\n"
                f"Option 2: score {s2:.4f} ({self._describe(f2)}).\n\n"
                f"Option {winner} wins ({why}).\nConclusion: Option {winner}")

    def _factuality(self, inp: Mapping[str, Any]) -> str:
        s = self.settings
        source = f"{inp['prefix']}\n{inp['reference']}"
        candidate = str(inp["continuation"])
        src_words = set(normalize_words(source))
        numbers = sorted(_numbers(candidate) - _numbers(source))
        entities = sorted(e for e in _entities(candidate) if e.strip(_STRIP) not in src_words
                          and not set(normalize_words(e)) <= src_words)
        weight = len(numbers) + s.entity_weight * len(entities)
        if weight >= s.definite_at:
            label = "Definite Hallucination"
        elif weight >= s.possible_at:
            label = "Possible Hallucination"
        else:
            label = "No Hallucination"
        reasoning = (f"Proxy check (overlap with the references, not a model): {len(numbers)} numbers "
                     f"{numbers[:8]} and {len(entities)} capitalised words {entities[:8]} of the "
                     f"continuation appear in neither the beginning nor the human continuation; "
                     f"weight {weight:.1f} (possible at {s.possible_at:g}, definite at {s.definite_at:g}).")
        return json.dumps({"reasoning": reasoning, "label": label})

    def _rlmt(self, inp: Mapping[str, Any]) -> str:
        f1 = token_f1(str(inp["prediction"]), str(inp["reference"]))
        return json.dumps({"score": int(f1 >= self.settings.rlmt_f1)})

    def _thoughts(self, inp: Mapping[str, Any]) -> str:
        """Stand-in teacher: before a few sentences, a first-person plan naming that sentence's
        first content words. Text outside the tags is untouched, so the integrity gate passes;
        the thoughts carry real information about what follows (what a teacher's should do)."""
        text = str(inp["text"])
        starts = [m.end() for m in re.finditer(r"[.!?]\s+(?=[A-Z0-9\"'(])", text)]
        if not starts:
            raise ValueError("proxy teacher: no sentence boundary to think at")
        step = max(1, len(starts) // self.settings.thoughts_per_text)
        out, last = [], 0
        for pos in starts[::step][: self.settings.thoughts_per_text]:
            nxt = re.split(r"(?<=[.!?])\s", text[pos:], maxsplit=1)[0]
            words = [w for w in re.findall(r"[A-Za-z][A-Za-z'-]{3,}|\d+", nxt) if w.lower() not in STOPWORDS]
            plan = ", ".join(dict.fromkeys(words[:4])) or "the next point"
            out += [text[last:pos], f"<think>Next I should write about {plan}.</think>"]
            last = pos
        return "".join(out) + text[last:]

    def _coherence(self, inp: Mapping[str, Any]) -> str:
        a, b = repetition(str(inp["continuation_a"])), repetition(str(inp["continuation_b"]))
        if abs(a - b) < self.settings.tie_margin:
            return "TIE"
        return "A" if a < b else "B"

    # ------------------------------------------------------------------ backend API

    _FIELDS = {"safety": ("text",), "quality": ("prefix", "option_1", "option_2"),
               "factuality": ("prefix", "reference", "continuation"),
               "coherence": ("continuation_a", "continuation_b"),
               "rlmt_judge": ("reference", "prediction"), "thoughts": ("text",)}

    def _check(self, req: LLMRequest) -> str:
        name = req.prompt.split("@", 1)[0]
        if name not in self._FIELDS:
            raise ValueError(f"proxy judge cannot answer {req.prompt}")
        for field in self._FIELDS[name]:
            if field not in req.inputs or req.inputs[field] is None:
                raise ValueError(f"proxy judge: request for {req.prompt} lacks input {field!r}")
        return name

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
                text = {"safety": self._safety, "factuality": self._factuality,
                        "rlmt_judge": self._rlmt, "coherence": self._coherence,
                        "thoughts": self._thoughts}[name](req.inputs)
                results[i] = LLMResult(text=text)
            except Exception as exc:  # noqa: BLE001 - one bad request must not sink the batch
                results[i] = LLMResult(text=None, error=str(exc) or type(exc).__name__)
        if quality:
            pairs = []
            for i in quality:
                inp = requests[i].inputs
                prefix = str(inp["prefix"])
                pairs += [(prefix, str(inp["option_1"])), (prefix, str(inp["option_2"]))]
            try:
                scored = self._quality_scores(pairs)
                for j, i in enumerate(quality):
                    texts = (pairs[2 * j][1], pairs[2 * j + 1][1])
                    results[i] = LLMResult(text=self._quality_answer(scored[2 * j:2 * j + 2], texts))
            except Exception as exc:  # noqa: BLE001 - e.g. the scoring LM failed to load
                for i in quality:
                    results[i] = LLMResult(text=None, error=f"proxy quality judge failed: {exc}".splitlines()[0])
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
