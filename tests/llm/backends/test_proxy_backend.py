"""The offline proxy judge: answers in the prompts' exact formats, prefers real text over broken
text, is order-invariant and deterministic."""

from __future__ import annotations

import random

import pytest
from conftest import DATA, c4_records

from sip_core.config import LLMConfig
from sip_core.llm.parsers import parse
from sip_core.llm.prompting import load_prompt
from sip_core.llm.backends.proxy import (
    JUDGE_PROMPTS, PROXY_VERSION, ProxyJudgeBackend, ProxySettings, order_penalty, repetition, token_f1,
)

WORDLISTS = DATA / "safety" / "wordlists"


@pytest.fixture(scope="module")
def proxy() -> ProxyJudgeBackend:
    return ProxyJudgeBackend(use_lm=False, wordlists=WORDLISTS)


@pytest.fixture(scope="module")
def cases() -> list[tuple[str, str]]:
    """(prefix, suffix) from C4: 150 words of context, the next 100 words as the suffix."""
    out = []
    for rec in c4_records(400):
        words = rec["text"].split(" ")
        if len(rec["text"].split()) >= 260:
            out.append((" ".join(words[:150]), " " + " ".join(words[150:250])))
    assert len(out) >= 40
    return out


def shuffled(text: str, seed: int) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " " + " ".join(words)


def looped(text: str, seed: int) -> str:
    words = text.split()
    k = 6 + seed % 10
    return " " + " ".join((words[:k] * 100)[:len(words)])


def winner(proxy: ProxyJudgeBackend, prefix: str, first: str, second: str) -> str:
    """The text the proxy picks, asked in the given option order."""
    req = load_prompt("quality").render(prefix=prefix, option_1=first, option_2=second)
    [res] = proxy.generate([req])
    parsed = parse("quality", res.text)
    assert parsed.ok, res.text
    return first if parsed.value == 1 else second


def judge_requests(prefix: str, suffix: str, other: str) -> list:
    return [
        load_prompt("safety").render(text=suffix),
        load_prompt("quality").render(prefix=prefix, option_1=suffix, option_2=other),
        load_prompt("factuality").render(prefix=prefix, reference=suffix, continuation=other),
        load_prompt("coherence").render(prefix=prefix, continuation_a=suffix, continuation_b=other),
        load_prompt("rlmt_judge").render(prefix=prefix, reference=suffix, prediction=other),
    ]


# --------------------------------------------------------------------------- format

def test_model_id_names_the_proxy():
    b = ProxyJudgeBackend(use_lm=False)
    assert b.kind == "proxy"
    assert b.model_id == f"proxy:{PROXY_VERSION}:none"
    assert ProxyJudgeBackend(use_lm=False, settings=ProxySettings(rlmt_f1=0.5)).model_id != b.model_id
    with_lm = ProxyJudgeBackend(LLMConfig(backend="proxy", model="bundled:smollm2-135m-instruct"))
    assert with_lm.model_id.startswith(f"proxy:{PROXY_VERSION}:bundled:smollm2-135m-instruct:")
    assert "proxy" in (ProxyJudgeBackend.__doc__ or "").lower()


def test_every_judge_answer_parses_with_the_real_parser(proxy, cases):
    prefix, suffix = cases[0]
    for other in (suffix, shuffled(suffix, 1), looped(suffix, 1), cases[1][1], ""):
        reqs = judge_requests(prefix, suffix, other)
        assert {r.prompt.split("@")[0] for r in reqs} == set(JUDGE_PROMPTS)
        for req, res in zip(reqs, proxy.generate(reqs)):
            assert res.ok, (req.prompt, res.error)
            parsed = parse(req.prompt, res.text)
            assert parsed.ok, (req.prompt, res.text, parsed.error)


def test_prompts_it_cannot_answer_get_an_error(proxy):
    reqs = [
        load_prompt("rewrite").render(prefix="a b", suffix=" c", prefix_ending="a b", n_tokens=8),
        load_prompt("corruption").render(prefix="p", suffix="s", kind="factual"),
        load_prompt("safety").render(text="fine"),
    ]
    results = proxy.generate(reqs)
    for req, res in zip(reqs[:2], results):
        assert not res.ok and res.text is None
        assert res.error == f"proxy judge cannot answer {req.prompt}"
    assert results[2].ok  # one bad request does not sink the others


def test_proxy_teacher_answers_a_text_with_no_sentence_boundary_with_no_thought(proxy):
    """Nowhere to think is an answer (recorded once as malformed), not a failed call asked every run."""
    from sip_core.augment.thought_insertion import gate
    from sip_core.llm.parsers import parse

    text = "no sentence boundary here"
    [res] = proxy.generate([load_prompt("thoughts").render(text=text)])
    assert res.ok and res.text == text
    parsed = parse("thoughts", res.text)
    assert not parsed.ok and gate(text, None)[0] == "malformed"


def test_proxy_teacher_thoughts_pass_the_integrity_gate_and_name_what_follows(proxy):
    from sip_core.llm.parsers import parse
    from sip_core.llm.thought_markup import thought_spans
    from sip_core.augment.thought_insertion import gate

    text = ("The bridge opened in 1932. Engineers from Sydney built the arch in eight years. "
            "Traffic grew quickly after the war. Tolls paid for the whole construction by 1988.")
    res = proxy.generate([load_prompt("thoughts").render(text=text)])[0]
    parsed = parse("thoughts", res.text)
    assert parsed.ok and gate(text, parsed.value) == ("ok", "")
    spans = [parsed.value[s:e] for s, e in thought_spans(parsed.value)]
    assert len(spans) == 3 and "Engineers" in spans[0] and "Tolls" in spans[-1]


def test_missing_inputs_are_an_error_not_a_guess(proxy):
    req = load_prompt("safety").render(text="x")
    bare = type(req)(req.messages, req.sampling, req.prompt, {})
    [res] = proxy.generate([bare])
    assert not res.ok and "lacks input 'text'" in res.error


def test_hooks_see_every_result(proxy):
    reqs = [load_prompt("safety").render(text=f"text {i}") for i in range(3)]
    seen, done = [], []
    results = proxy.generate(reqs, progress=done.append, on_result=lambda i, r: seen.append((i, r.text)))
    assert sorted(i for i, _ in seen) == [0, 1, 2] and sum(done) == 3
    assert [t for _, t in sorted(seen)] == [r.text for r in results]


# --------------------------------------------------------------------------- quality

def test_prefers_the_original_over_shuffled_or_looped_text(proxy, cases):
    n = 24
    wins = 0
    for i, (prefix, suffix) in enumerate(cases[:n]):
        corrupt = shuffled(suffix, i) if i % 2 == 0 else looped(suffix, i)
        wins += winner(proxy, prefix, suffix, corrupt) == suffix
    rate = wins / n
    print(f"proxy (no LM) prefers the original C4 suffix in {wins}/{n} = {rate:.0%} of cases")
    assert rate >= 0.9


def test_same_candidate_wins_in_both_option_orders(proxy, cases):
    for i, (prefix, suffix) in enumerate(cases[:20]):
        others = [shuffled(suffix, i), looped(suffix, i), cases[i + 1][1], suffix[: len(suffix) // 2]]
        for other in others:
            assert winner(proxy, prefix, suffix, other) == winner(proxy, prefix, other, suffix)


def test_ties_are_broken_by_text_not_position(proxy):
    # two texts with identical statistics: only the tie-break decides
    a, b = " alpha beta gamma delta.", " delta gamma beta alpha."
    scores = proxy._quality_scores([("ctx", a), ("ctx", b)])
    assert scores[0][0] == scores[1][0]
    assert winner(proxy, "ctx", a, b) == winner(proxy, "ctx", b, a)


def test_word_order_and_repetition_statistics(cases):
    prefix, suffix = cases[2]
    assert order_penalty(suffix) < 0.2 < order_penalty(shuffled(suffix, 0))
    assert repetition(suffix) < 0.1 < 0.5 < repetition(looped(suffix, 0))


# --------------------------------------------------------------------------- other judges

def ldnoobw_words(k: int) -> list[str]:
    words = [w.strip() for w in (WORDLISTS / "ldnoobw" / "en.txt").read_text().splitlines()]
    return [w for w in words if w.isalpha() and len(w) > 3][:k]


def test_safety_flags_text_with_five_ldnoobw_words(proxy, cases):
    clean = cases[3][1]
    dirty = clean + " " + " ".join(f"{w} and" for w in ldnoobw_words(5))
    reqs = [load_prompt("safety").render(text=t) for t in (clean, dirty)]
    verdicts = [parse("safety", r.text).value for r in proxy.generate(reqs)]
    assert verdicts == [True, False]


def test_safety_passes_most_clean_c4_text(proxy, cases):
    reqs = [load_prompt("safety").render(text=s) for _, s in cases[:40]]
    safe = [parse("safety", r.text).value for r in proxy.generate(reqs)]
    assert sum(safe) >= 38


def test_factuality_penalises_unsupported_numbers_and_names(proxy, cases):
    prefix, suffix = cases[4]
    invented = suffix + " In 1873 the Mayor Bartholomew Quenby paid 4,512 dollars to Zanzibar Holdings."
    reqs = [load_prompt("factuality").render(prefix=prefix, reference=suffix, continuation=c)
            for c in (suffix, invented)]
    labels = [parse("factuality", r.text).value for r in proxy.generate(reqs)]
    assert labels == [1.0, 0.0]


def test_rlmt_judge_rewards_predictions_close_to_the_truth(proxy, cases):
    prefix, suffix = cases[5]
    assert token_f1(suffix, suffix) == 1.0
    reqs = [load_prompt("rlmt_judge").render(prefix=prefix, reference=suffix, prediction=p)
            for p in (suffix, cases[6][1], "")]
    assert [parse("rlmt_judge", r.text).value for r in proxy.generate(reqs)] == [1, 0, 0]


def test_coherence_prefers_less_repetition_and_ties(proxy, cases):
    prefix, suffix = cases[7]
    loop = looped(suffix, 3)
    p = load_prompt("coherence")
    reqs = [p.render(prefix=prefix, continuation_a=suffix, continuation_b=loop),
            p.render(prefix=prefix, continuation_a=loop, continuation_b=suffix),
            p.render(prefix=prefix, continuation_a=suffix, continuation_b=suffix)]
    assert [r.text for r in proxy.generate(reqs)] == ["A", "B", "TIE"]


# --------------------------------------------------------------------------- determinism

def test_answers_are_deterministic_and_ignore_seeds(cases):
    reqs = []
    for i, (prefix, suffix) in enumerate(cases[:6]):
        for seed in (0, 1):
            for r in judge_requests(prefix, suffix, shuffled(suffix, i)):
                reqs.append(load_prompt(r.prompt.split("@")[0]).render({"seed": seed, "temperature": 1.5}, **r.inputs))
    a = [r.text for r in ProxyJudgeBackend(use_lm=False, wordlists=WORDLISTS).generate(reqs)]
    b = [r.text for r in ProxyJudgeBackend(use_lm=False, wordlists=WORDLISTS).generate(list(reversed(reqs)))]
    assert a == list(reversed(b))
    for base in range(0, len(a), 10):  # seed 0 and seed 1 get the same answers
        assert a[base:base + 5] == a[base + 5:base + 10]


def test_with_the_small_lm(cases):
    """One run with the bundled SmolLM2 scoring likelihoods (CPU)."""
    proxy = ProxyJudgeBackend(LLMConfig(backend="proxy", batch_size=4), wordlists=WORDLISTS)
    prefix, suffix = cases[8]
    prefix = " ".join(prefix.split()[-40:])
    suffix = " " + " ".join(suffix.split()[:40])
    corrupt = [shuffled(suffix, 0), looped(suffix, 0)]
    p = load_prompt("quality")
    reqs = [p.render(prefix=prefix, option_1=o1, option_2=o2)
            for c in corrupt for o1, o2 in ((suffix, c), (c, suffix))]
    results = proxy.generate(reqs)
    values = [parse("quality", r.text).value for r in results]
    assert values == [1, 2, 1, 2]  # the original wins, whatever the order
    assert "lm_logprob" in results[0].text
    lp = proxy.lm_scores([(prefix, suffix), (prefix, corrupt[0])])
    assert lp[0] > lp[1]  # memoised: same numbers as inside the judgments
    again = [r.text for r in proxy.generate(reqs)]
    assert again == [r.text for r in results]
