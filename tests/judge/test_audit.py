"""The judge audit and the injection probe: a judge that always picks the first option fails the
gate, the proxy judge passes on rule corruptions, a judge that obeys documents is caught."""

from __future__ import annotations

import re

from fake_openai import FakeOpenAI
from llm_job_fixtures import blocks, outside_blocks, chunks, smoke_config  # noqa: F401  (chunks: the fixture)
from sip_core.config import load_config
from sip_core.infra.run_context import RunContext
from sip_core.llm.factory import open_llm


def _pairs(chunks_manifest, root, n=12):
    from sip_core.judge.audit import build_pairs
    from sip_core.infra import store
    env = RunContext(smoke_config(root))
    pairs = build_pairs(env, chunks_manifest, n)
    return [r for f in pairs.files for r in store.read_parquet(f).to_pylist()]


def test_audit_reveals_a_judge_that_always_answers_the_first_option(chunks, tmp_path):
    from sip_core.judge.audit import audit_judge

    root, manifest = chunks
    pairs = _pairs(manifest, tmp_path)
    assert {p["dimension"] for p in pairs} >= {"quality", "factuality", "safety"}
    cfg = load_config(None, [f"run.root={tmp_path}", "judge.backend=openai", "judge.model=fake", "judge.audit_seeds=2"])
    with FakeOpenAI(responder=lambda m: "Conclusion: Option 1" if "Option 1" in m[-1]["content"]
                    else "FINAL DECISION: YES") as srv:
        cfg.judge.base_url = srv.base_url
        report = audit_judge(pairs, open_llm(cfg, "judge"), cfg.judge)
    assert report.position_bias == 1.0 and not report.passed
    assert any("position bias" in r for r in report.reasons)
    assert report.dimensions["quality"]["accuracy"] == 0.5  # right exactly when the original is shown first
    assert report.dimensions["quality"]["order_consistency"] == 0.0


def test_audit_of_the_proxy_judge_passes_on_rule_corruptions(chunks, tmp_path):
    from sip_core.judge.audit import audit_judge

    root, manifest = chunks
    cfg = load_config(None, [f"run.root={tmp_path}", "judge.backend=proxy", "judge.model=none"])
    report = audit_judge(_pairs(manifest, tmp_path), open_llm(cfg, "judge"), cfg.judge)
    print(report.table(), report.position_bias)
    assert report.judge.startswith("proxy:") and report.parse_failure_rate == 0.0
    assert report.dimensions["quality"]["accuracy"] >= 0.8 and abs(report.position_bias - 0.5) < 0.2


def test_injection_probe_catches_a_judge_that_obeys_documents(chunks, tmp_path):
    from sip_core.judge.audit import injection_probe

    root, manifest = chunks
    pairs = _pairs(manifest, tmp_path)

    order = re.compile(r"(?:answer:|settled\.) Conclusion: Option (\d)")

    def gullible(messages):  # prefers the original, unless a document tells it otherwise
        if found := order.search(messages[-1]["content"]):
            return f"Conclusion: Option {found.group(1)}"
        return "Conclusion: Option 1" if blocks(messages)["OPTION 1"] in originals else "Conclusion: Option 2"

    def fence_aware(messages):  # obeys only what stands outside the request's fenced blocks
        if found := order.search(outside_blocks(messages)):
            return f"Conclusion: Option {found.group(1)}"
        return "Conclusion: Option 1" if blocks(messages)["OPTION 1"] in originals else "Conclusion: Option 2"
    originals = {p["original"] for p in pairs}
    cfg = load_config(None, [f"run.root={tmp_path}", "judge.backend=openai", "judge.model=fake"])
    with FakeOpenAI(responder=gullible) as srv:
        cfg.judge.base_url = srv.base_url
        gullible_report = injection_probe(pairs, open_llm(cfg, "judge"), cfg.judge)
    assert gullible_report["eligible"] > 0 and gullible_report["flip_rate"] == 1.0
    assert set(gullible_report["by_injection"]) == {"instruction", "forged-delimiter"}
    assert all(v["flip_rate"] == 1.0 for v in gullible_report["by_injection"].values())
    # a forged closing marker does not get the document's note out of its block
    with FakeOpenAI(responder=fence_aware) as srv:
        cfg.judge.base_url, cfg.judge.model = srv.base_url, "fake-fence-aware"  # not the cached gullible answers
        aware_report = injection_probe(pairs, open_llm(cfg, "judge"), cfg.judge)
    assert aware_report["eligible"] > 0 and aware_report["flips"] == 0
    proxy_cfg = load_config(None, [f"run.root={tmp_path}", "judge.model=none"])
    proxy_report = injection_probe(pairs, open_llm(proxy_cfg, "judge"), proxy_cfg.judge)
    print("flip rates: gullible", gullible_report, "proxy", proxy_report)
    # the proxy never reads instructions, but the appended sentence changes the option's text
    # statistics, so some verdicts move: the probe measures that too
    assert proxy_report["eligible"] > 0 and proxy_report["flip_rate"] < 0.5


def test_injection_flips_are_part_of_the_gate():
    from sip_core.judge.audit import AuditReport, _gate

    cfg = load_config(None, ["judge.gate_max_injection_flips=0.1"]).judge
    fooled = AuditReport(judge="x", position_bias=0.5, injection={"flip_rate": 0.3, "flips": 3, "eligible": 10})
    _gate(fooled, cfg)
    assert not fooled.passed and fooled.reasons == ["injected documents flipped 30% of verdicts > 10%"]
    steady = AuditReport(judge="x", position_bias=0.5, injection={"flip_rate": 0.05, "flips": 1, "eligible": 20})
    _gate(steady, cfg)
    assert steady.passed and steady.reasons == []


def test_the_audit_reports_each_phases_progress_to_the_end(chunks, tmp_path):
    """run_audit's track(phase, total) is asked once per phase (both verdict modes of a model
    judge, the injection probe) and each phase's progress reaches its total."""
    from sip_core.judge.audit import run_audit

    _, manifest = chunks
    done: dict[str, list[int]] = {}

    def track(phase: str, total: int):
        done[phase] = [0, total]
        return lambda n: done[phase].__setitem__(0, done[phase][0] + n)

    cfg = load_config(None, [f"run.root={tmp_path}", "judge.backend=openai", "judge.model=fake", "judge.audit_items=6",
                             "judge.audit_seeds=1", "judge.audit_both_modes=false"])
    with FakeOpenAI(responder=lambda m: "Conclusion: Option 1" if "Option 1" in m[-1]["content"]
                    else "FINAL DECISION: NO") as srv:
        cfg.judge.base_url = srv.base_url
        run_audit(RunContext(cfg), manifest, open_llm(cfg, "judge"), track=track)
        asked = srv.stats()["requests"]
    assert set(done) == {"sample verdicts", "injection probe"}, done
    assert all(n == total > 0 for n, total in done.values()), done
    # every request counted: those sent and those the judgment cache answered (the probe's plain
    # variant repeats the audit's own seed-0 requests)
    assert 0 < asked < sum(total for _, total in done.values())


def test_a_judge_that_reads_an_options_start_is_audited_on_corruptions_within_it(chunks, tmp_path, tokenizer):
    """A trained judge reads each option's first `option_tokens`: the audit cuts suffixes to them
    before corrupting, so every item differs where the judge looks (uncut, a profanity injected or
    a sentence moved past token 8 would be invisible to it), and the pairs are cached apart."""
    from sip_core.infra import store
    from sip_core.infra.models import resolve_model
    from sip_core.judge.audit import build_pairs
    from sip_core.judge.spec import JudgeSpec

    root, manifest = chunks
    env = RunContext(smoke_config(tmp_path))
    spec = JudgeSpec(verdict="probs", option_tokens=8, tokenizer=resolve_model("bundled:smollm2-135m-instruct"))
    cut = build_pairs(env, manifest, 12, spec=spec)
    rows = [r for f in cut.files for r in store.read_parquet(f).to_pylist()]
    assert rows and cut.artifact_id != build_pairs(env, manifest, 12).artifact_id
    for r in rows:
        assert len(tokenizer(r["original"], add_special_tokens=False)["input_ids"]) <= 8
        assert spec.cut("option_1", r["corrupted"]) != r["original"], r["rule"]


def test_the_gate_enforces_only_the_dimensions_the_judge_is_used_for():
    from sip_core.judge.audit import AuditReport, _gate

    def report():
        return AuditReport(judge="x", position_bias=0.5, dimensions={
            "quality": {"accuracy": 0.95}, "safety": {"accuracy": 0.99}, "factuality": {"accuracy": 0.53}})

    every = report()
    _gate(every, load_config(None, []).judge)
    assert not every.passed and every.reasons == ["factuality accuracy 0.53 < 0.6"]
    assert every.gated_dimensions == ["factuality", "quality", "safety"]
    used = report()
    _gate(used, load_config(None, ["judge.gate_dimensions=[quality, safety]"]).judge)
    assert used.passed and used.gated_dimensions == ["quality", "safety"]
    weak = report()
    weak.dimensions["quality"]["accuracy"] = 0.5
    _gate(weak, load_config(None, ["judge.gate_dimensions=[quality]"]).judge)
    assert not weak.passed and weak.reasons == ["quality accuracy 0.5 < 0.6"]


def test_a_trained_training_judge_is_gated_on_what_training_asks_it():
    from sip_core.judge.independence import training_dimensions

    assert training_dimensions(load_config(None, [])) == ["quality"]
    assert training_dimensions(load_config(None, ["judge.criteria=[quality, factuality]"])) == ["factuality",
                                                                                                "quality"]
    assert training_dimensions(load_config(None, ["filter.llm_stage=true"])) == ["quality", "safety"]
