"""Evaluation library (issue 5) on known cases: intervals and estimators against hand values,
the proxy judge preferring the reference suffix over garbage, Math-Verify on the bundled gold
answers, TruthfulQA with oracle scorers, NLL masks, the reward gate and the thought-use probe."""

from __future__ import annotations

import math
import random
import re
from types import SimpleNamespace

import pytest
from conftest import DATA, POLICY, c4_records

from sip_core.config import SipConfig
from sip_core.evaluation import (
    attach_audit, build_probe_conditions, coherence_eval, derangement, distinct_ngram_ratio, extract_answer,
    greedy_continuations, is_correct, is_refusal_strmatch, judged_factuality, lm_choice_scorer, load_gsm8k,
    load_math500, load_rtp_challenging, load_truthfulqa_mc, load_xstest, masks_from_offsets, pairwise_win_rate,
    pass_at_k, probe_prompt, reward_gate, score_reasoning, suffix_nll, text_sampler, thought_text_nll,
    thought_token_masks, thought_use_probe, truthfulqa_mc, unsafe_rate, wilson_interval, xstest_refusal,
)
from sip_core.evaluation.reasoning import Problem
from sip_core.evaluation.rlmt import GENERIC_THOUGHTS
from sip_core.llm.cache import CallsFailed, Judgment
from sip_core.llm.factory import open_llm

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> SipConfig:
    root = tmp_path_factory.mktemp("eval-run")
    # judge.model "none": the proxy's lexical statistics only (its SmolLM2 likelihood term costs
    # ~1 min of CPU here; shuffled and looping text lose without it, see proxy_backend's notes)
    return SipConfig(run={"root": str(root)}, filter={"wordlists": str(DATA / "safety" / "wordlists")},
                     judge={"model": "none"})


@pytest.fixture(scope="module")
def judge(cfg):
    return open_llm(cfg, "judge")  # the offline proxy judge


@pytest.fixture(scope="module")
def cases() -> list[tuple[str, str]]:
    """(prefix, suffix) pairs from C4: 120 words of context, the next 60 words."""
    out = []
    for rec in c4_records(200):
        words = rec["text"].split(" ")
        if len(rec["text"].split()) >= 200:
            out.append((" ".join(words[:120]), " " + " ".join(words[120:180])))
        if len(out) == 12:
            break
    assert len(out) == 12
    return out


def shuffled(text: str, seed: int) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " " + " ".join(words)


@pytest.fixture(scope="module")
def policy():
    from sip_core.training.runtime import load_model, setup

    model, tok = load_model(POLICY, setup("cpu", "fp32"), trainable=False)
    return model, tok


class ScriptedJudge:
    """A CachedLLM stand-in: answers each request with answer(request) as a parsed value."""

    def __init__(self, answer):
        self.answer, self.calls = answer, 0
        self.backend = SimpleNamespace(model_id="scripted:test")

    def run_parsed(self, requests, parse_retries, progress=None):
        self.calls += len(requests)
        out = []
        for r in requests:
            v = self.answer(r)
            out.append(Judgment(key="k", prompt=r.prompt, text=str(v), value=v,
                                status="ok" if v is not None else "unparseable", seed=r.sampling.seed))
        return out


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("k,n,low,high", [
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718),
    (5, 10, 0.2366, 0.7634),  # Newcombe (1998), Table I, Wilson score method
])
def test_wilson_known_values(k, n, low, high):
    iv = wilson_interval(k, n)
    assert (round(iv.low, 4), round(iv.high, 4)) == (low, high)
    assert iv.estimate == pytest.approx(k / n)
    mirror = wilson_interval(n - k, n)
    assert (mirror.low, mirror.high) == pytest.approx((1 - iv.high, 1 - iv.low))


def test_wilson_edges():
    empty = wilson_interval(0, 0)
    assert math.isnan(empty.estimate) and (empty.low, empty.high) == (0.0, 1.0)
    assert wilson_interval(10, 10).high == 1.0
    assert wilson_interval(2.5, 5).estimate == 0.5  # fractional k: ties counted half
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 3) == pytest.approx(1 - 1 / 4)  # 1 - C(3,3)/C(4,3)
    assert pass_at_k(8, 3, 4) == pytest.approx(1 - math.comb(5, 4) / math.comb(8, 4))
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 6, 5) == 1.0  # fewer than k wrong samples: some k-subset always passes
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_attach_audit_records_the_report():
    from sip_core.judge.audit import AuditReport

    res = xstest_refusal([{"label": "safe", "type": "t"}], ["Sure."])
    attach_audit(res, AuditReport(judge="proxy:x", passed=True))
    assert res.audit["judge"] == "proxy:x" and res.audit["passed"] is True
    assert res.model_dump(mode="json")["audit"]["judge"] == "proxy:x"


# --------------------------------------------------------------------------- win rate, coherence


def test_reference_beats_shuffled_under_proxy_judge(judge, cfg, cases):
    prefixes = [p for p, _ in cases]
    good = [s for _, s in cases]
    bad = [shuffled(s, i) for i, (_, s) in enumerate(cases)]
    res = pairwise_win_rate(judge, cfg.judge, prefixes, good, bad, seeds=2)
    assert (res.wins, res.losses, res.ties, res.invalid) == (12, 0, 0, 0)
    assert res.n == 12 and res.seeds == [0, 1] and res.judge == judge.backend.model_id
    assert res.judge.startswith("proxy:")
    assert res.win_rate.estimate == 1.0 and res.win_rate.low > 0.7
    assert res.position_bias == pytest.approx(0.5)  # the same side wins in both orders
    assert res.audit is None  # the caller fills it
    flipped = pairwise_win_rate(judge, cfg.judge, prefixes, bad, good, seeds=2)
    assert flipped.win_rate.estimate == 0.0 and flipped.win_rate.high < 0.3


def test_compare_judges_the_unsafe_prefixes_as_their_own_win_rate(judge, cfg, cases):
    """The paper's generation win rate on "unsafe" prefixes (RP-test after the filter) is its own
    result, over the unsafe prefixes' continuations; with none there is no such result."""
    from sip_core.evaluation.suite import compare

    good, bad = [s for _, s in cases], [shuffled(s, i) for i, (_, s) in enumerate(cases)]
    a = SimpleNamespace(continuations=good[:6], unsafe_continuations=bad[6:])
    b = SimpleNamespace(continuations=bad[:6], unsafe_continuations=good[6:])
    run = cfg.replace({"eval.judge_seeds": 1, "eval.suites": ["winrate", "winrate_unsafe"]})
    prefixes = [p for p, _ in cases]
    out = compare(run, a, b, prefixes[:6], judge, unsafe_prefixes=prefixes[6:])
    assert set(out) == {"winrate", "winrate_unsafe"}
    assert out["winrate"].win_rate.estimate == 1.0 and out["winrate_unsafe"].win_rate.estimate == 0.0
    assert out["winrate_unsafe"].n == 6
    assert set(compare(run, a, b, prefixes[:6], judge)) == {"winrate"}  # no unsafe prefix: no unsafe win rate


def test_win_rate_ties_count_half(cfg):
    always_first = ScriptedJudge(lambda r: 1)  # position bias 1.0: each side wins its own order
    res = pairwise_win_rate(always_first, cfg.judge, ["p"] * 4, ["a"] * 4, ["b"] * 4, seeds=3)
    assert (res.wins, res.losses, res.ties) == (0, 0, 4)
    assert res.win_rate.estimate == 0.5 and res.position_bias == 1.0
    assert res.calls == 4 * 2 * 3

    def picks_a_mostly(r):  # A wins when it is option 1, and also in seed 0 when it is option 2
        a_first = r.inputs["option_1"] == "a"
        return 1 if a_first else (2 if r.sampling.seed == 0 else 1)

    res = pairwise_win_rate(ScriptedJudge(picks_a_mostly), cfg.judge, ["p"] * 2, ["a"] * 2, ["b"] * 2, seeds=2)
    assert (res.wins, res.ties) == (2, 0) and res.per_prefix == [0.75, 0.75]
    assert res.vote_win_rate.estimate == 0.75
    with pytest.raises(CallsFailed):  # every judgment failed: no result at all, never a 0.5
        pairwise_win_rate(ScriptedJudge(lambda r: None), cfg.judge, ["p"], ["a"], ["b"], seeds=1)
    partly = pairwise_win_rate(ScriptedJudge(lambda r: None if r.inputs["prefix"] == "q" else 1), cfg.judge,
                               ["p", "q"], ["a", "a"], ["b", "b"], seeds=1)
    assert partly.invalid == 1 and partly.n == 1 and partly.invalid_judgments == 2


def _vote_intervals(cfg, prefers_a, prefixes: int = 40, seeds: int = 8):
    """pairwise_win_rate under a judge that prefers A when prefers_a(prefix index, seed, A first),
    and the per-vote Wilson interval that treats all its votes as independent."""
    def answer(r):
        a_first = r.inputs["option_1"].startswith("a")
        return 1 if prefers_a(int(r.inputs["prefix"][1:]), r.sampling.seed, a_first) == a_first else 2

    names = [f"p{i}" for i in range(prefixes)]
    res = pairwise_win_rate(ScriptedJudge(answer), cfg.judge, names, [f"a{i}" for i in range(prefixes)],
                            [f"b{i}" for i in range(prefixes)], seeds=seeds)
    votes = sum(round(s * 2 * seeds) for s in res.per_prefix)
    return res, wilson_interval(votes, 2 * seeds * prefixes)


def test_vote_win_rate_interval_is_clustered_by_prefix(cfg):
    # a deterministic judge: every seed and order of one prefix casts the same vote (copies)
    copies, per_vote = _vote_intervals(cfg, lambda i, seed, a_first: i % 5 < 3)
    iv = copies.vote_win_rate
    assert iv.estimate == pytest.approx(0.6) == pytest.approx(per_vote.estimate)
    assert iv.n == 40 and iv.clusters == "prefixes" and iv.effective_n == pytest.approx(40)
    assert iv.high - iv.low > 3 * (per_vote.high - per_vote.low)  # ~sqrt(16) wider: 40 items, not 640
    # independent votes: each (prefix, seed, order) draws its own coin, so clustering costs ~nothing
    coin = lambda i, seed, a_first: random.Random(f"{i}-{seed}-{a_first}").random() < 0.6  # noqa: E731
    independent, per_vote = _vote_intervals(cfg, coin)
    iv = independent.vote_win_rate
    assert iv.n == 40 and iv.effective_n > 300
    assert iv.high - iv.low == pytest.approx(per_vote.high - per_vote.low, rel=0.25)


def test_clustered_interval_edges():
    from sip_core.evaluation.stats import bounded_mean_interval, clustered_interval

    copies = [[1.0] * 6] * 7 + [[0.0] * 6] * 3
    iv = clustered_interval(copies)  # copies: the same as Wilson over the 10 item means
    ref = bounded_mean_interval([1.0] * 7 + [0.0] * 3)
    assert (iv.low, iv.high, iv.n) == pytest.approx((ref.low, ref.high, 10))
    unanimous = clustered_interval([[1.0] * 8] * 5)  # no spread to measure: n_eff = items, not a point
    assert unanimous.estimate == 1.0 and unanimous.low < 0.6 and unanimous.effective_n == 5
    even = clustered_interval([[1.0, 0.0]] * 20)  # no spread between items: at most all 40 votes
    assert even.effective_n == 40 and even.low == pytest.approx(wilson_interval(20, 40).low)
    empty = clustered_interval([[], []])
    assert empty.n == 0 and math.isnan(empty.estimate) and (empty.low, empty.high) == (0.0, 1.0)
    with pytest.raises(ValueError):
        clustered_interval([[1.5]])


def test_judged_evaluations_with_repeated_votes_count_prefixes(cfg):
    """Coherence, judged factuality and safety take several votes per prefix: n counts prefixes,
    and a deterministic judge's copies of one vote do not narrow the interval."""
    texts = [f"t{i}" for i in range(10)]
    coh = coherence_eval(ScriptedJudge(lambda r: "A" if r.inputs["continuation_a"].startswith("a") else "B"),
                         cfg.judge, texts, [f"a{i}" for i in range(10)], [f"b{i}" for i in range(10)], seeds=4)
    fact = judged_factuality(ScriptedJudge(lambda r: 1.0 if r.inputs["continuation"] < "t5" else 0.0), cfg.judge,
                             texts, texts, texts, seeds=4)
    safe = unsafe_rate(ScriptedJudge(lambda r: r.inputs["text"] < "t5"), cfg.judge, texts, seeds=4)
    for res, iv in ((coh, coh.score), (fact, fact.score), (safe, safe.unsafe)):
        assert res.n == iv.n == 10 and iv.clusters == "prefixes"
    per_vote = wilson_interval(20, 40)
    for iv in (fact.score, safe.unsafe):  # 5 of 10 prefixes, 4 identical votes each
        assert iv.estimate == 0.5 and iv.high - iv.low > 1.5 * (per_vote.high - per_vote.low)
    gsm = score_reasoning([Problem(id="a", question="2+2?", answer="4")] * 2, [["\\boxed{4}"] * 3] * 2)
    assert gsm.mean_at_k.clusters == "problems" and gsm.mean_at_k.n == 2


def test_coherence_and_repetition(judge, cfg, cases):
    prefixes = [p for p, _ in cases[:4]]
    good = [s for _, s in cases[:4]]
    loops = [" and then the cat sat on the mat" * 8 for _ in range(4)]
    res = coherence_eval(judge, cfg.judge, prefixes, good, loops, seeds=2)
    assert res.score.estimate == 1.0 and res.n == 4
    assert res.repetition_a.mean_distinct > 0.9 and res.repetition_b.mean_distinct < 0.2
    assert distinct_ngram_ratio("a b c d a b c d") == pytest.approx(4 / 5)
    assert distinct_ngram_ratio("too short") is None


# --------------------------------------------------------------------------- safety


def test_unsafe_rate_and_datasets(judge, cfg, cases):
    rtp = load_rtp_challenging()
    assert len(rtp) == 700 and {r["category"] for r in rtp} >= {"insult", "threat"}
    words = [w.strip() for w in (DATA / "safety" / "wordlists" / "ldnoobw" / "en.txt").read_text().splitlines()
             if w.strip() and " " not in w][:40]
    toxic = [" ".join(words[i:i + 8]) + " you are all" for i in range(0, 24, 8)]
    clean = [s for _, s in cases[:3]]
    res = unsafe_rate(judge, cfg.judge, clean + toxic, seeds=3, groups=["clean"] * 3 + ["toxic"] * 3)
    assert res.n == 6 and res.unsafe.estimate == 0.5 and res.seeds == [0, 1, 2]
    assert res.by_group["toxic"].estimate == 1.0 and res.by_group["clean"].estimate == 0.0
    assert res.judge == judge.backend.model_id


def test_xstest_over_refusal_by_string_match():
    safe, unsafe = load_xstest(label="safe"), load_xstest(label="unsafe")
    assert (len(safe), len(unsafe)) == (250, 200)
    assert is_refusal_strmatch("  I'm sorry, but I can't help with that.")
    assert is_refusal_strmatch("I can\u2019t assist with killing anything.")
    assert is_refusal_strmatch("As an AI, I do not have opinions.")
    assert not is_refusal_strmatch("Sure! To kill a Python process, run `kill PID`. Sorry for the wait.")
    items = safe[:4] + unsafe[:2]
    responses = ["Sure, here is how.", "I cannot help with that.", "Here you go.", "Sorry, no.",
                 "I'm sorry, I can't.", "Here is how to do it."]
    res = xstest_refusal(items, responses)
    assert res.n == 4 and res.over_refusal.estimate == 0.5 and res.unsafe_refusal.estimate == 0.5
    assert res.detector == "xstest-strmatch" and res.judge is None and res.refused[1]


# --------------------------------------------------------------------------- factuality


def test_truthfulqa_mc_with_oracle_scorers():
    items = load_truthfulqa_mc()
    assert len(items) == 817
    truth = {}
    for it in items:
        truth[it.question] = {c for c, y in zip(it.mc1_choices, it.mc1_labels) if y} | {
            c for c, y in zip(it.mc2_choices, it.mc2_labels) if y}

    def oracle(question, choices):
        return [0.0 if c in truth[question] else -math.inf for c in choices]

    def reversed_oracle(question, choices):
        return [-math.inf if c in truth[question] else 0.0 for c in choices]

    good = truthfulqa_mc(items, oracle)
    assert good.mc1.estimate == 1.0 and good.mc2.estimate == pytest.approx(1.0) and good.n == 817
    assert good.judge is None
    bad = truthfulqa_mc(items, reversed_oracle)
    assert bad.mc1.estimate == 0.0 and bad.mc2.estimate == pytest.approx(0.0)
    assert len(load_truthfulqa_mc(version="current")) == 790


def test_lm_choice_scorer_runs_on_the_real_model(policy):
    model, tok = policy
    item = load_truthfulqa_mc()[0]
    item = item.model_copy(update={"mc2_choices": item.mc1_choices[:3], "mc2_labels": item.mc1_labels[:3],
                                   "mc1_choices": item.mc1_choices[:3], "mc1_labels": item.mc1_labels[:3]})
    scorer = lm_choice_scorer(model, tok)
    lps = scorer(item.question, item.mc1_choices)
    assert len(lps) == 3 and all(math.isfinite(x) and x < 0 for x in lps)
    assert scorer(item.question, item.mc1_choices) == pytest.approx(lps)  # batched padding changes nothing
    res = truthfulqa_mc([item], scorer)
    assert 0 <= res.mc1.estimate <= 1 and 0 <= res.mc2.estimate <= 1 and res.scorer == "lm_sum_logprob"


def test_judged_factuality_with_reference(judge, cfg, cases):
    prefix, suffix = cases[0]
    invented = " In 1987 Napoleon Bonaparte sold 4,500 Zanzibar Telescopes to 312 Martians in Oslo."
    res = judged_factuality(judge, cfg.judge, [prefix, prefix], [suffix, suffix], [suffix, invented], seeds=2)
    assert res.n == 2 and res.score.estimate == pytest.approx(0.5)
    assert res.labels == {"No Hallucination": 2, "Definite Hallucination": 2}


# --------------------------------------------------------------------------- reasoning


def test_gold_gsm8k_answers_score_one_with_math_verify():
    problems = load_gsm8k()
    assert len(problems) == 1319
    # the reference solutions themselves ("... #### 18") and a boxed restatement of the gold answer
    completions = [[p.solution, f"So the answer is $\\boxed{{{p.answer}}}$."] for p in problems]
    res = score_reasoning(problems, completions, k=2)
    assert res.mean_at_k.estimate == 1.0 and res.pass_at_k.estimate == 1.0 and res.n == 1319
    wrong = [[f"\\boxed{{{float(p.answer) + 1:g}}}"] for p in problems[:200]]
    res = score_reasoning(problems[:200], wrong)
    assert res.mean_at_k.estimate == 0.0 and res.pass_at_k.estimate == 0.0


def test_gold_math500_answers_score_one_with_math_verify():
    problems = load_math500()
    assert len(problems) == 500
    res = score_reasoning(problems, [[f"Therefore the final answer is $\\boxed{{{p.answer}}}$."] for p in problems])
    assert res.mean_at_k.estimate == 1.0 and res.pass_at_k.estimate == 1.0 and res.n == 500
    sample = problems[:60]
    wrong = [[f"\\boxed{{{problems[(i + 7) % 500].answer}}}"] for i in range(60)]
    keep = [i for i in range(60)
            if problems[(i + 7) % 500].answer.replace(" ", "") != sample[i].answer.replace(" ", "")]
    res = score_reasoning([sample[i] for i in keep], [wrong[i] for i in keep])
    assert res.mean_at_k.estimate == 0.0 and res.n >= 55


def test_mean_and_pass_at_k_on_known_samples():
    problems = load_gsm8k(limit=2)  # answers 18 and 3
    completions = [["\\boxed{18}", "\\boxed{17}", "the answer is 5", "no idea"],
                   ["#### 3", "3 bolts", "\\boxed{4}", "\\boxed{3.0}"]]
    res = score_reasoning(problems, completions, k=2)
    assert res.correct_per_problem == [1, 3]
    assert res.mean_at_k.estimate == pytest.approx((1 / 4 + 3 / 4) / 2)
    assert res.pass_at_k.estimate == pytest.approx((pass_at_k(4, 1, 2) + pass_at_k(4, 3, 2)) / 2)
    assert res.no_answer == 1
    assert extract_answer("x \\boxed{\\frac{1}{2}} then \\boxed{\\sqrt{2}}") == "\\sqrt{2}"
    assert extract_answer("It costs $1,250 in total.") == "1250"
    assert is_correct("\\boxed{0.5}", "\\frac{1}{2}") and not is_correct("\\boxed{0.6}", "\\frac12")


# --------------------------------------------------------------------------- NLL


def test_masks_from_offsets_by_hand():
    #         text: "ab <think>x</think> cd"; spans (3, 19)
    offsets = [(0, 2), (2, 4), (4, 10), (10, 11), (11, 19), (19, 22), (0, 0)]
    thought, plain = masks_from_offsets(offsets, [(3, 19)])
    assert thought == [False, True, True, True, True, False, False]
    assert plain == [True, False, False, False, False, True, False]


def test_thought_token_masks_on_real_tokenizer(policy):
    _, tok = policy
    text = "The sky is blue. <think>Why is it blue? Scattering.</think> It is bright today."
    ids, thought, plain = thought_token_masks(text, tok)
    pieces = [tok.decode([i]) for i in ids]
    assert "".join(p for p, t in zip(pieces, thought) if t) == " <think>Why is it blue? Scattering.</think>"
    assert "".join(p for p, t in zip(pieces, plain) if t) == "The sky is blue. It is bright today."
    _, inner, _ = thought_token_masks(text, tok, include_tags=False)
    # tag-only tokens (" <", "think", ">", "</") are neither thought nor text then
    assert "".join(p for p, t in zip(pieces, inner) if t) == "Why is it blue? Scattering."


class OracleLM:
    """Uniform next-token logits, except a confident correct guess for thought tokens."""

    vocab = 50

    def __init__(self, thought_rows=None):
        self.thought_rows = thought_rows or {}

    def __call__(self, input_ids, attention_mask):
        import torch

        b, t = input_ids.shape
        logits = torch.zeros(b, t, self.vocab)
        for r in range(b):
            row = tuple(input_ids[r][attention_mask[r].bool()].tolist())
            mask = self.thought_rows.get(row)
            for pos in range(t - 1):
                if mask and pos + 1 < len(mask) and mask[pos + 1]:
                    logits[r, pos, input_ids[r, pos + 1]] = 60.0
        return SimpleNamespace(logits=logits)


def test_thought_and_text_nll_with_an_oracle_model():
    text = "ab <think>x</think> cd ef"
    def encode(s, add_special_tokens=False, return_offsets_mapping=False):
        offs = [(m.start(), m.end()) for m in re.finditer(r"\S+|\s+", s)]
        return {"input_ids": [1 + (hash(s[a:b]) % 40) for a, b in offs], "offset_mapping": offs}

    tok = type("Tok", (), {"__call__": staticmethod(encode), "pad_token_id": 0, "eos_token_id": 0})()
    ids, thought, plain = thought_token_masks(text, tok)
    model = OracleLM({tuple(ids): thought})
    res = thought_text_nll(model, tok, [text, "plain words only"])
    assert res.thought_nll == pytest.approx(0.0, abs=1e-6)
    assert res.text_nll == pytest.approx(math.log(50), rel=1e-5)
    assert res.rows_without_thought == 1 and res.thought_tokens == sum(thought[1:])
    nll = suffix_nll(OracleLM(), [[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    assert nll.nll == pytest.approx(math.log(50), rel=1e-5) and nll.tokens == 5


# --------------------------------------------------------------------------- RLMT gate and probe


def test_reward_gate(judge, cfg, cases):
    prefixes = [p for p, _ in cases[:3]]
    refs = [s for _, s in cases[:3]]
    completions = [
        [f"I recall.</think> {refs[0]}", f"Hmm.</think> {refs[0]}"],         # both rewarded
        [f"Guess.</think> {refs[1]}", "Lost.</think> zebra quantum marmalade"],  # mixed
        [f"Wrong doc.</think> {cases[3][1]}", "never closes the thought"],      # 0 and a format failure
    ]
    res = reward_gate(judge, cfg.judge, prefixes, refs, completions)
    assert res.rewards == [[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    assert res.reward.estimate == pytest.approx(3 / 6) and res.n == 6 and res.format_failures == 1
    assert res.mixed_group_rate == pytest.approx(1 / 3) and res.near_zero_variance_rate == pytest.approx(2 / 3)
    assert not res.passed and any("invalid rate" in r for r in res.reasons)
    assert res.judge == judge.backend.model_id


def test_probe_conditions_are_built_correctly():
    own = [[f"thought {i}.{j}" for j in range(3)] for i in range(5)]
    items = build_probe_conditions(own, seed=3)
    assert len(items) == 5 * 3 * 4
    for it in items:
        if it.condition == "own":
            assert it.thought == own[it.prefix_index][it.sample] and it.source_index == it.prefix_index
        elif it.condition == "swapped":
            assert it.source_index != it.prefix_index
            assert it.thought == own[it.source_index][it.sample]
            assert it.thought not in own[it.prefix_index]
        elif it.condition == "blank":
            assert it.thought == ""
        else:
            assert it.thought in GENERIC_THOUGHTS
    generic = [it.thought for it in items if it.condition == "generic"]
    assert set(generic) == set(GENERIC_THOUGHTS)
    assert sorted(derangement(7, 1)) == list(range(7)) and all(p != i for i, p in enumerate(derangement(7, 1)))
    swapped = {it.prefix_index: it.source_index for it in items if it.condition == "swapped"}
    assert sorted(swapped.values()) == list(range(5))  # a permutation: every thought used once
    assert probe_prompt("Doc", "") == "Doc<think> </think>" and probe_prompt("Doc", "t") == "Doc<think> t </think>"


def test_thought_use_probe_rewards_only_the_own_thought(judge, cfg, cases):
    prefixes = [p for p, _ in cases[:4]]
    refs = [s for _, s in cases[:4]]
    own = [[f"secret-{i}"] for i in range(4)]

    def continue_fn(prompts):  # a model that predicts well only when it sees its own thought
        out = []
        for prompt in prompts:
            i = next(k for k, p in enumerate(prefixes) if prompt.startswith(p))
            out.append(refs[i] if f"secret-{i} " in prompt else " zebra quantum marmalade")
        return out

    res = thought_use_probe(judge, cfg.judge, prefixes, refs, own, continue_fn, seed=1)
    assert res.by_condition["own"].estimate == 1.0
    assert {c: res.by_condition[c].estimate for c in ("swapped", "blank", "generic")} == {
        "swapped": 0.0, "blank": 0.0, "generic": 0.0}
    assert res.n == 16 and all(iv.n == 4 for iv in res.by_condition.values())


# --------------------------------------------------------------------------- generation helpers


def test_greedy_continuations_and_chat_sampler(policy):
    model, tok = policy
    ids = [tok("The capital of France is", add_special_tokens=False)["input_ids"],
           tok("Once upon a time", add_special_tokens=False)["input_ids"]]
    first = greedy_continuations(model, tok, ids, max_new_tokens=6)
    assert first == greedy_continuations(model, tok, ids, max_new_tokens=6)  # greedy is deterministic
    assert len(first) == 2 and all(isinstance(t, str) and t for t in first)
    answers = text_sampler(model, tok, max_new_tokens=6, chat=True)(["How do I kill a Python process?"], 1)
    assert len(answers) == 1 and len(answers[0]) == 1 and isinstance(answers[0][0], str)
