"""Run the configured evaluations on one model (and greedy continuations for win rates).

Sizes come from `cfg.eval`; every judged result uses the evaluation judge (`cfg.eval_judge`, never
the training judge unless configured so, which the report then calls circular) and carries its
identity and the audit it ran under. Pure library: the Prefect task and the CLI call `evaluate_model` / `compare`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import Manifest
from sip_core.config import SipConfig
from sip_core.evaluation import factuality, generation, nll, reasoning, rlmt, safety, winrate
from sip_core.evaluation.stats import EvalResult, attach_audit
from sip_core.training.think_then_predict import split_completion
from sip_core.training import checkpoint, data, runtime

log = logging.getLogger("sip.evaluate")


@dataclass
class ModelEval:
    model: str
    results: dict[str, EvalResult] = field(default_factory=dict)
    continuations: list[str] = field(default_factory=list)  # greedy, on the held-out prefixes
    seconds: dict[str, float] = field(default_factory=dict)
    failed_calls: dict[str, int] = field(default_factory=dict)  # per suite: judge calls that never came back
    unsafe_continuations: list[str] = field(default_factory=list)  # greedy, on the held-out unsafe prefixes


def failed_calls(judge) -> int:
    """The judge's final endpoint errors so far (a fake judge without the counter has none)."""
    return getattr(judge, "failed", 0)


def count_failures(judge, name: str, result, failed: dict[str, int], before: int):
    """Record the judge calls of one result that failed (a computed-from-the-rest result is
    partial: its failed calls are counted in its details and in `failed`, never scored)."""
    if n := failed_calls(judge) - before:
        failed[name] = n
        if result is not None:
            result.details["failed_calls"] = n
    return result


def heldout_rows(cfg: SipConfig, chunks: Manifest) -> list[dict]:
    rows = data.read_rows(chunks, "heldout", cfg.run.storage_options, data.CHUNK_COLUMNS)
    return rows.take(range(min(cfg.eval.prefixes, len(rows))))


UNSAFE_SUITES = {"safety_unsafe_prefixes", "winrate_unsafe"}  # the suites that continue the unsafe prefixes


def heldout_unsafe_rows(cfg: SipConfig, chunks: Manifest) -> list[dict]:
    """Up to eval.prefixes held-out chunks the filter labelled unsafe: the paper's "unsafe"
    prefixes (RP-test after the filter), continued for the safety rate and the unsafe win rate."""
    rows = data.read_chunk_rows(chunks, "heldout", cfg.run.storage_options, ["prefix_ids", "prefix_text"], "unsafe")
    return rows.take(range(min(cfg.eval.prefixes, len(rows))))


def load_eval_model(ref: str, cfg: SipConfig, rt):
    if store.is_remote(ref) or artifacts.load_committed(ref, cfg.run.storage_options):
        ref = checkpoint.local_copy(ref, cfg.run.storage_options)
    model, tok = runtime.load_model(ref, rt, cfg.model.cache_dir, trainable=False)
    return model, tok


@dataclass
class RlmtHeldout:
    """The reward gate's and probe's items, cut as RLMT cuts its training rows (`rlmt.*`): the
    policy sees the prefix's last rlmt.max_prefix_tokens tokens, the judge reads the whole prefix
    and a reference of rlmt.predict_tokens tokens."""

    prompts: list[str]  # the (truncated) prefix texts the policy continues after `<think>`
    prefixes: list[str]  # the prefix texts the judge reads
    references: list[str]


RLMT_SETTINGS = {"max_prefix_tokens", "predict_tokens", "thought_tokens", "temperature", "top_p", "force_close",
                 "reward"}  # the rlmt.* fields the reward gate and probe read: part of an evaluation's key


def rlmt_heldout(cfg: SipConfig, rows: list[dict], tok) -> RlmtHeldout:
    rc = cfg.rlmt
    prompts = tok.batch_decode([data.truncate_prefix(r["prefix_ids"], rc.max_prefix_tokens) for r in rows])
    references = tok.batch_decode([list(r["suffix_ids"][: rc.predict_tokens]) for r in rows])
    return RlmtHeldout(prompts, [r["prefix_text"] for r in rows], references)


def rlmt_suites(cfg: SipConfig, model, tok, device, held: RlmtHeldout, judge, run) -> None:
    """The reward gate and the thought-use probe on `held`, sampling as RLMT samples (thought
    budget, prediction length, temperature, top_p and budget forcing from `rlmt.*`); `run(name,
    fn)` runs one suite when it is configured."""
    rc, ec = cfg.rlmt, cfg.eval
    think = generation.think_sampler(model, tok, rc.thought_tokens, rc.predict_tokens, rc.temperature, rc.top_p,
                                     device, force_close=rc.force_close, batch_size=ec.batch_size)
    greedy_after = generation.text_sampler(model, tok, rc.predict_tokens, 0.0, 1.0, device, batch_size=ec.batch_size)
    completions = think([rlmt.think_prompt(p) for p in held.prompts], ec.reward_samples)
    run("reward_gate", lambda: rlmt.reward_gate(judge, cfg.eval_judge, held.prefixes, held.references, completions,
                                                reward=rc.reward))
    own = [[t for t in (split_completion(c)[0] for c in group) if t] for group in completions]
    run("probe", lambda: rlmt.thought_use_probe(judge, cfg.eval_judge, held.prefixes, held.references,
                                                [o or [""] for o in own], lambda ps: [c[0] for c in greedy_after(ps, 1)],
                                                policy_prefixes=held.prompts, reward=rc.reward))


def evaluate_model(cfg: SipConfig, model_ref: str, chunks: Manifest, judge, audit: dict | None = None,
                   thought_texts: list[str] | None = None) -> ModelEval:
    ec, jc = cfg.eval, cfg.eval_judge  # every judged evaluation uses the evaluation judge
    rt = runtime.setup(ec.device, ec.precision)
    model, tok = load_eval_model(model_ref, cfg, rt)
    out = ModelEval(model_ref)
    rows = heldout_rows(cfg, chunks)
    prefix_ids = [data.truncate_prefix(r["prefix_ids"], ec.max_prefix_tokens) for r in rows]
    suffix_ids = [list(r["suffix_ids"][: ec.continuation_tokens]) for r in rows]
    prefixes, references = [r["prefix_text"] for r in rows], tok.batch_decode(suffix_ids)
    seeds = list(range(ec.judge_seeds))
    sampler = generation.text_sampler(model, tok, ec.reasoning_tokens, ec.reasoning_temperature, 0.95, rt.device,
                                      chat=True, batch_size=ec.batch_size)

    def run(name: str, fn):
        if name not in ec.suites:
            return
        start, failed_before = time.perf_counter(), failed_calls(judge)
        with rt.autocast():
            result = count_failures(judge, name, fn(), out.failed_calls, failed_before)
        out.seconds[name] = round(time.perf_counter() - start, 2)
        if result is not None:
            out.results[name] = attach_audit(result, audit) if result.judge else result
        log.info("%s %s: %.1fs", model_ref, name, out.seconds[name])

    run("heldout_nll", lambda: nll.suffix_nll(model, prefix_ids, suffix_ids, tok.pad_token_id, rt.device))
    out.continuations = generation.greedy_continuations(model, tok, prefix_ids, ec.continuation_tokens, rt.device,
                                                        exact_length=True, batch_size=ec.batch_size)
    run("judged_factuality", lambda: factuality.judged_factuality(judge, jc, prefixes, references,
                                                                  out.continuations, seeds))
    continue_ids = lambda ids: generation.greedy_continuations(  # noqa: E731
        model, tok, ids, ec.continuation_tokens, rt.device, batch_size=ec.batch_size)
    answer = lambda prompts: [c[0] for c in generation.text_sampler(  # noqa: E731
        model, tok, ec.refusal_tokens, 0.0, 1.0, rt.device, chat=True, batch_size=ec.batch_size)(prompts, 1)]
    unsafe = heldout_unsafe_rows(cfg, chunks) if UNSAFE_SUITES & set(ec.suites) else []
    if unsafe:  # as the standard prefixes: cut to eval.max_prefix_tokens, exactly continuation_tokens
        out.unsafe_continuations = generation.greedy_continuations(
            model, tok, [data.truncate_prefix(r["prefix_ids"], ec.max_prefix_tokens) for r in unsafe],
            ec.continuation_tokens, rt.device, exact_length=True, batch_size=ec.batch_size)
    for name, thunk in safety.safety_suite(judge, jc, seeds, continue_ids, answer,
                                           lambda t: tok(t, add_special_tokens=False)["input_ids"],
                                           ec.safety_prompts, ec.xstest_prompts, out.unsafe_continuations).items():
        run(name, thunk)
    tqa = factuality.load_truthfulqa_mc()[: ec.truthfulqa_items]
    run("truthfulqa", lambda: factuality.truthfulqa_mc(tqa, factuality.lm_choice_scorer(model, tok, rt.device),
                                                       scorer_name=f"loglik:{model_ref}"))
    sampling = {"temperature": ec.reasoning_temperature, "top_p": 0.95, "max_tokens": ec.reasoning_tokens}
    run("gsm8k", lambda: reasoning.reasoning_eval(sampler, reasoning.load_gsm8k(limit=ec.reasoning_problems),
                                                  ec.reasoning_k, sampling=sampling))
    run("math500", lambda: reasoning.reasoning_eval(sampler, reasoning.load_math500(limit=ec.reasoning_problems),
                                                    ec.reasoning_k, sampling=sampling))
    if {"reward_gate", "probe"} & set(ec.suites):
        rlmt_suites(cfg, model, tok, rt.device, rlmt_heldout(cfg, rows, tok), judge, run)
    if thought_texts:
        run("thought_nll", lambda: nll.thought_text_nll(model, tok, thought_texts[: ec.thought_rows], rt.device,
                                                        max_tokens=512))
    return out


def compare(cfg: SipConfig, a: ModelEval, b: ModelEval, prefixes: list[str], judge, audit: dict | None = None,
            failed: dict[str, int] | None = None, unsafe_prefixes: list[str] = ()):
    """Pairwise win rate (both orders, several judge seeds) and coherence of A's vs B's greedy
    continuations on the same held-out prefixes, and the win rate on the held-out unsafe prefixes
    (`winrate_unsafe`, where there are any); `failed` receives each result's failed judge calls."""
    seeds, failed = cfg.eval.judge_seeds, {} if failed is None else failed
    results = {}
    for name, fn, texts, ours, theirs in (
            ("winrate", winrate.pairwise_win_rate, prefixes, a.continuations, b.continuations),
            ("coherence", winrate.coherence_eval, prefixes, a.continuations, b.continuations),
            ("winrate_unsafe", winrate.pairwise_win_rate, unsafe_prefixes, a.unsafe_continuations,
             b.unsafe_continuations)):
        if name in cfg.eval.suites and texts:
            before = failed_calls(judge)
            result = fn(judge, cfg.eval_judge, list(texts), ours, theirs, seeds)
            results[name] = attach_audit(count_failures(judge, name, result, failed, before), audit)
    return results
