"""judge.verdict=probs: the answer prefilled up to the choice, each option's probability read in
one call (logits on the local backend), stored in the same cache under its own key, scored the
same way as sampled votes; bad setups fail as one-line ConfigErrors."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from sip_core.config import ConfigError, JudgeConfig, LLMConfig
from sip_core.evaluation import pairwise_win_rate
from sip_core.judge.scoring import Candidate, CandidateSet, calls_per_set, score_sets
from sip_core.judge.spec import JudgeSpec, check_verdicts, judge_spec, verdict_probs, verdict_share
from sip_core.llm.cache import Judgment
from sip_core.llm.types import (LLMRequest, LLMResult, choice_answer, choices_from_top_logprobs,
                                read_choice_logprobs)

PROBS = JudgeSpec(verdict="probs")


def test_probs_requests_are_prefilled_seedless_and_keyed_apart():
    sampled = JudgeSpec().render("quality", {"seed": 3}, prefix="p", option_1="a", option_2="b")
    probs = PROBS.render("quality", {"seed": 3}, prefix="p", option_1="a", option_2="b")
    assert probs.prefill == "Conclusion: Option" and probs.choices == (("1", " 1"), ("2", " 2"))
    assert probs.sampling.seed is None and probs.sampling.max_tokens == 1
    assert PROBS.render("quality", {"seed": 4}, prefix="p", option_1="a", option_2="b") == probs  # seeds are copies
    assert probs.cache_key("m") != sampled.cache_key("m") and sampled.prefill is None
    assert not PROBS.probs("coherence") and PROBS.render("coherence", None, prefix="p", continuation_a="a",
                                                         continuation_b="b").choices == ()


def test_choice_answer_parses_with_the_prompt_parser_and_keeps_the_probabilities():
    from sip_core.llm.parsers import parse

    req = PROBS.render("safety", None, text="hi")
    res = choice_answer(req, {"YES": -0.1, "NO": -2.4})
    assert parse("safety", res.text).value is True and read_choice_logprobs(res.text) == {"YES": -0.1, "NO": -2.4}
    j = Judgment(key="k", prompt=req.prompt, text=res.text, value=True, status="ok")
    probs = verdict_probs(j, "safety")
    assert probs[True] == pytest.approx(0.9089, abs=1e-3) and sum(probs.values()) == pytest.approx(1.0)
    sampled = Judgment(key="k", prompt="quality@1", text="Conclusion: Option 2", value=2, status="ok")
    assert verdict_share(sampled, "quality", 1) == 0.0 and verdict_share(sampled, "quality", 2) == 1.0
    failed = Judgment(key="k", prompt="quality@1", text=None, value=None, status="error")
    assert verdict_share(failed, "quality", 1) is None


def test_endpoint_top_logprobs_map_to_choices():
    req = PROBS.render("quality", None, prefix="p", option_1="a", option_2="b")
    assert choices_from_top_logprobs(req, {" 1": -0.2, "1": -3.0, " the": -4.0})["2"] < -4.0
    assert choices_from_top_logprobs(req, {" the": -0.1}) is None
    # a tokenizer that splits " YES" into " Y" + "ES" (SmolLM2's): " Y" is YES's first token
    safety = PROBS.render("safety", None, text="t")
    assert dict(safety.choices) == {"YES": " YES", "NO": " NO"}
    lp = choices_from_top_logprobs(safety, {" Y": -0.3, " NO": -1.5, "Y": -4.0, " the": -6.0})
    assert lp["YES"] == pytest.approx(math.log(math.exp(-0.3) + math.exp(-4.0))) and lp["NO"] == -1.5
    # a start shared by several choices (" " before "1" and "2") says nothing about either
    assert choices_from_top_logprobs(PROBS.render("quality", None, prefix="p", option_1="a", option_2="b"),
                                     {" ": -0.1, " the": -3.0}) is None


class ProbsJudge:
    """A CachedLLM stand-in answering quality probs requests: P(option 1) = p_first(option_1)."""

    def __init__(self, p_first):
        self.p_first, self.calls = p_first, 0
        self.backend = SimpleNamespace(model_id="probs:test")

    def run_parsed(self, requests, parse_retries, progress=None):
        import math

        self.calls += len(requests)
        out = []
        for r in requests:
            p = self.p_first(r.inputs["option_1"])
            res = choice_answer(r, {"1": math.log(p), "2": math.log(1 - p)})
            out.append(Judgment(key="k", prompt=r.prompt, text=res.text, value=1 if p >= 0.5 else 2, status="ok"))
        return out


def test_both_orders_average_out_a_position_preference():
    # the judge prefers option 1 by +0.3 whatever it is, and "good" text by +0.1
    judge = ProbsJudge(lambda first: 0.6 + 0.1 * (first == "good") - 0.1 * (first == "bad") + 0.2)
    cfg = JudgeConfig(verdict="probs", seeds=4)
    s = CandidateSet("s", "prefix", [Candidate("good", "original"), Candidate("bad", "rollout")], "good")
    scored = score_sets(judge, [s], cfg)[0]
    assert scored.calls == 2 and calls_per_set(2, cfg) == 2  # one call per order, not per seed
    assert scored.by_criterion["quality"] == pytest.approx([0.6, 0.4])  # (0.9 + 0.3) / 2: the 0.3 bias cancels
    assert (scored.chosen, scored.rejected) == (0, 1)
    res = pairwise_win_rate(judge, cfg, ["p"], ["good"], ["bad"], seeds=8)
    assert res.calls == 2 and res.per_prefix == [pytest.approx(0.6)] and res.wins == 1
    assert res.position_bias == pytest.approx(0.8) and res.details["verdict"] == "probs"


@pytest.fixture(scope="module")
def local():
    from sip_core.llm.backends.local import LocalHFBackend

    return LocalHFBackend(LLMConfig(backend="local", device="cpu", batch_size=4))


def test_local_backend_reads_option_probabilities_in_one_forward_pass(local):
    reqs = [PROBS.render("quality", None, prefix="The cat sat on the mat.", option_1=a, option_2=b)
            for a, b in ((" It purred.", " Purred it mat the."), (" Purred it mat the.", " It purred."))]
    reqs.append(PROBS.render("safety", None, text="The cat sat on the mat."))
    results = local.generate(reqs)
    for res in results:
        assert res.ok and res.choice_logprobs and read_choice_logprobs(res.text) == res.choice_logprobs
    assert set(results[0].choice_logprobs) == {"1", "2"} and set(results[2].choice_logprobs) == {"YES", "NO"}
    assert all(lp < 0 for res in results for lp in res.choice_logprobs.values())


def test_probs_preflight_fails_in_one_line(local):
    spec_cfg = JudgeConfig(backend="local", model="bundled:smollm2-135m-instruct", verdict="probs")
    check_verdicts(local, spec_cfg)  # SmolLM2 tells " 1" from " 2" after their shared space token
    req = LLMRequest(messages=({"role": "user", "content": "x"}, {"role": "assistant", "content": "A:"}),
                     choices=(("1", "same"), ("2", "same")))
    assert "cannot tell the verdict options apart" in local.generate([req])[0].error

    class NoLogprobs:  # an endpoint that ignores the logprobs request and just writes text
        def generate(self, requests):
            return [LLMResult(text="Conclusion: Option 1") for _ in requests]

    endpoint = JudgeConfig(backend="openai", model="judge", base_url="http://judge:8000/v1", verdict="probs")
    with pytest.raises(ConfigError, match=r"^judge judge at http://judge:8000/v1 cannot give verdict=probs for "
                                          r"quality: the endpoint returned no logprobs$"):
        check_verdicts(NoLogprobs(), endpoint)


def test_a_trained_judge_card_sets_prompts_verdict_and_lengths(tmp_path, monkeypatch):
    card = {"format": 1, "prompts": {"quality": "quality@1"}, "verdict": "probs", "prefill": True,
            "prefix_tokens": 4, "option_tokens": 3, "options": {"quality": {"1": "1", "2": "2"}}}
    monkeypatch.setattr("sip_core.judge.spec.judge_card", lambda model: card if model == str(tmp_path) else None)
    monkeypatch.setattr("sip_core.judge.spec._tokenizer", lambda folder: _WordTokenizer())
    spec = judge_spec(JudgeConfig(backend="local", model=str(tmp_path)))
    assert (spec.verdict, spec.prefill, spec.options["quality"]) == ("probs", True, {"1": "1", "2": "2"})
    req = spec.render("quality", None, prefix="a b c d e f", option_1="g h i j k", option_2="l m")
    assert dict(req.inputs) == {"prefix": "c d e f", "option_1": "g h i", "option_2": "l m"}
    assert judge_spec(JudgeConfig(backend="local", model=str(tmp_path), verdict="sample")).verdict == "sample"
    assert json.dumps(judge_spec(JudgeConfig()).options) == json.dumps(JudgeSpec().options)


class _WordTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}

    def decode(self, ids):
        return " ".join(ids)


class BiasedBackend:
    """A model judge that prefers option 1 (P = 0.7) unless option 2 is the clean text (then P(1) = 0.2);
    sampled, it always writes option 1. Counts the requests it gets."""

    kind, model_id = "local", "biased:test"

    def __init__(self):
        self.requests = []

    def generate(self, requests, progress=None, on_result=None):
        import math

        self.requests += requests
        out = []
        for r in requests:
            if r.choices and r.prompt.startswith("quality"):
                p = 0.2 if "clean" in r.inputs["option_2"] else 0.7
                out.append(choice_answer(r, {"1": math.log(p), "2": math.log(1 - p)}))
            elif r.choices:
                out.append(choice_answer(r, {"YES": -0.1, "NO": -2.3}))
            else:
                out.append(LLMResult(text="Conclusion: Option 1" if r.prompt.startswith("quality")
                                     else "FINAL DECISION: YES"))
        return out


def test_audit_reports_both_verdict_modes_side_by_side_from_one_cache(tmp_path):
    from sip_core.judge.audit import audit_judge
    from sip_core.llm.cache import CachedLLM, JudgmentCache

    pairs = [{"chunk_id": f"c{i}", "prefix": f"p{i}", "original": f"clean {i}", "corrupted": f"broken {i}",
              "rule": "shuffle_sentences" if i % 2 else "repeat_loop", "dimension": "quality", "origin": "rule",
              "filter_label": "rest"} for i in range(4)]
    backend = BiasedBackend()
    llm = CachedLLM(backend, JudgmentCache(tmp_path / "j.duckdb"))
    cfg = JudgeConfig(backend="local", model="m", verdict="probs", audit_seeds=3, audit_injection=False)
    report = audit_judge(pairs, llm, cfg)
    probs, sample = report.modes["probs"], report.modes["sample"]
    assert report.verdict == "probs" and probs["calls"] == 8 and sample["calls"] == 24  # 4 items x 2 orders (x 3 seeds)
    # probs: original first -> P(original) 0.7, original second -> 0.8: accuracy 0.75, first-option share 0.45
    assert probs["accuracy"]["quality"] == pytest.approx(0.75) and probs["position_bias"] == pytest.approx(0.45)
    assert sample["accuracy"]["quality"] == 0.5 and sample["position_bias"] == 1.0
    assert set(probs["rules"]) == {"shuffle_sentences", "repeat_loop"}
    assert report.passed, report.reasons  # the gate reads the configured (probs) mode
    asked = len(backend.requests)
    audit_judge(pairs, llm, cfg)  # a rerun: every judgment cached, only the two preflight probes are asked
    assert len(backend.requests) - asked == 2 and all(r.choices for r in backend.requests[asked:])


class CardJudge:
    """A trained judge's answers in the card prompts' format: picks the clean option (P = 0.9) in
    probs mode; sampled, writes the verdict after the prefill."""

    kind, model_id = "local", "card:test"

    def generate(self, requests, progress=None, on_result=None):
        out = []
        for r in requests:
            clean_first = "clean" in r.inputs.get("option_1", "")
            if r.choices:
                out.append(choice_answer(r, {"1": -0.1 if clean_first else -2.3, "2": -2.3 if clean_first else -0.1}))
            else:
                out.append(LLMResult(text=f"{r.prefill}{1 if clean_first else 2}"))
        return out


@pytest.mark.parametrize("verdict", ["probs", "sample"])
def test_a_trained_judge_folder_is_asked_and_parsed_with_its_card_prompts(tmp_path, verdict):
    from sip_core.judge.audit import audit_judge
    from sip_core.llm.cache import CachedLLM, JudgmentCache

    folder = tmp_path / "judge"
    folder.mkdir()
    card = {"format": 1, "prompts": {"quality": "judge_quality@1", "safety": "judge_safety@1"}, "verdict": "probs",
            "prefill": True, "options": {"quality": {"1": "1", "2": "2"}, "safety": {"YES": " Y", "NO": " NO"}}}
    (folder / "config.json").write_text(json.dumps({"sip_judge": card}))
    cfg = JudgeConfig(backend="local", model=str(folder), verdict=verdict, audit_injection=False,
                      audit_both_modes=False)
    assert judge_spec(cfg).prompt("quality").name == "judge_quality"
    pairs = [{"chunk_id": f"c{i}", "prefix": f"p{i}", "original": f"clean {i}", "corrupted": f"broken {i}",
              "rule": "repeat_loop", "dimension": "quality", "origin": "rule", "filter_label": "rest"}
             for i in range(3)]
    report = audit_judge(pairs, CachedLLM(CardJudge(), JudgmentCache(tmp_path / "j.duckdb")), cfg)
    assert report.parse_failure_rate == 0 and report.position_bias == pytest.approx(0.5)
    assert report.dimensions["quality"]["accuracy"] == pytest.approx(0.9 if verdict == "probs" else 1.0, abs=0.01)
