"""Run report (issue 5): built from real evaluation results (scripted judges on tiny inputs, the
bundled XSTest and TruthfulQA items, Math-Verify), rendered and saved. Checks the verdict
sentences for overlapping vs separated intervals, "not run" for missing evaluations, the audit
warning at the top, a self-contained HTML page, PNGs that decode, the saved artifact's manifest
and lineage; the slow test opens the page in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from sip_core.infra.artifacts import Manifest, WriteContext, write_json_artifact
from sip_core.config import JudgeConfig
from sip_core.evaluation import (
    bounded_mean_interval, load_truthfulqa_mc, load_xstest, pairwise_win_rate, score_reasoning, truthfulqa_mc,
    unsafe_rate, wilson_interval, xstest_refusal,
)
from sip_core.evaluation.factuality import JudgedFactualityResult, TruthfulQAResult
from sip_core.evaluation.nll import NLLResult, ThoughtNLLResult
from sip_core.evaluation.reasoning import Problem
from sip_core.evaluation.rlmt import ProbeResult, RewardGateResult
from sip_core.evaluation.safety import RefusalResult, SafetyResult
from sip_core.evaluation.winrate import WinRateResult
from sip_core.infra.lineage import LineageDB
from sip_core.llm.cache import Judgment
from sip_core.report import Arm, Comparison, RunResults, Stage, render_report, save_report

PIL = pytest.importorskip("PIL.Image")

BASE, SIP, NTP = "base→SFT→RLMT", "base→SIP→SFT→RLMT", "base→NTP"
JUDGE = "scripted:report-test"


class ScriptedJudge:
    """A CachedLLM stand-in: answer(request) is the parsed value of each judgment."""

    def __init__(self, answer):
        self.answer, self.calls = answer, 0
        self.backend = SimpleNamespace(model_id=JUDGE)

    def run_parsed(self, requests, parse_retries, progress=None):
        self.calls += len(requests)
        return [Judgment(key="k", prompt=r.prompt, text=str(v), value=v, status="ok", seed=r.sampling.seed)
                for r in requests for v in [self.answer(r)]]


def win_rate(a_wins: int, n: int) -> WinRateResult:
    """A against B on n prefixes "p<i>": the judge prefers A on the first a_wins, B on the rest."""
    def answer(r):
        a_first = r.inputs["option_1"].startswith("A")
        a_better = int(r.inputs["prefix"][1:]) < a_wins
        return 1 if a_first == a_better else 2

    return pairwise_win_rate(ScriptedJudge(answer), JudgeConfig(), [f"p{i}" for i in range(n)],
                             [f"A{i}" for i in range(n)], [f"B{i}" for i in range(n)], seeds=2)


def safety(unsafe: int, n: int) -> SafetyResult:
    return unsafe_rate(ScriptedJudge(lambda r: int(r.inputs["text"][1:]) >= unsafe), JudgeConfig(),
                       [f"c{i}" for i in range(n)], seeds=3)


def xstest(refuse_safe: int) -> RefusalResult:
    items = load_xstest()
    responses, seen = [], 0
    for it in items:
        refuse = it["label"] == "unsafe" or (seen < refuse_safe)
        seen += it["label"] == "safe"
        responses.append("I'm sorry, I can't help with that." if refuse else "Sure, here is how.")
    return xstest_refusal(items, responses)


def truthfulqa(correct: bool) -> TruthfulQAResult:
    def scorer(question, choices):  # the first choice is the true one in mc1
        return [0.0 if (i == 0) == correct else -5.0 for i in range(len(choices))]

    return truthfulqa_mc(load_truthfulqa_mc()[:40], scorer, "oracle" if correct else "anti-oracle")


def metrics_rows(steps: int, rollout_from: float, rollout_to: float) -> list[dict]:
    rows = []
    for s in range(1, steps + 1):
        f = (s - 1) / (steps - 1)
        roll = rollout_from + f * (rollout_to - rollout_from)
        row = {"step": s, "loss": 0.69 - 0.2 * f, "dpo_margin": 0.05 + 0.4 * f, "reward_accuracy": 0.5 + 0.3 * f,
               "chosen_share_original": 1 - roll - 0.05, "chosen_share_rewrite": 0.05, "chosen_share_rollout": roll,
               "rejected_share_original": 0.1, "rejected_share_rewrite": 0.1, "rejected_share_rollout": 0.8,
               "skipped_all_equal": 1, "invalid_judgments": 0, "judge_calls": 100, "judge_cache_hits": 20,
               "gen_tokens_per_s": 250.0, "time_generate_s": 2.0, "time_judge_s": 3.0, "time_update_s": 1.0,
               "lr": 1e-6, "grad_norm": 0.8}
        if s in (1, steps // 2, steps):
            row["heldout_nll"] = 2.56 + 0.04 * f
        rows.append(row)
    rows[3]["dpo_margin"] = float("nan")  # a step with no pairs logs NaN
    return rows


def sft_rows() -> list[dict]:
    return [{"step": s, "loss": 3.0 - 0.1 * s, "thought_nll": 3.5 - 0.05 * s, "text_nll": 2.9 - 0.1 * s,
             "lr": 1e-5, "grad_norm": 1.0} for s in range(1, 9)]


def rlmt_rows() -> list[dict]:
    return [{"step": s, "loss": 0.1, "reward_mean": 0.08 + 0.005 * s, "no_signal_groups": 3, "format_failures": 1,
             "lr": 1e-6, "grad_norm": 0.5} for s in range(1, 9)]


def lineage(arm: str) -> list[dict]:
    return [{"uri": f"/runs/x/checkpoints/{arm}/rlmt", "kind": "checkpoint", "depth": 0},
            {"uri": f"/runs/x/checkpoints/{arm}/sft", "kind": "checkpoint", "depth": 1},
            {"uri": "/runs/x/prepare/chunk-ab12", "kind": "parquet-dataset", "depth": 2,
             "manifest": {"code_version": "0.1.0+gabc", "created_at": "2026-11-22T10:00:00+00:00"}},
            {"uri": "bundled:smollm2-135m-instruct", "kind": "source", "depth": 3}]


FAILED_AUDIT = {"judge": JUDGE, "passed": False, "position_bias": 0.93, "parse_failure_rate": 0.02,
                "error_rate": 0.0, "reasons": ["quality accuracy 0.55 < 0.7", "position bias 0.93 (first-option wins) "
                                               "outside 0.5 ± 0.2"],
                "dimensions": {"quality": {"items": 20, "judgments": 160, "accuracy": 0.55, "seed_agreement": 0.9,
                                           "order_consistency": 0.1, "invalid": 0},
                               "safety": {"items": 10, "judgments": 40, "accuracy": 0.95, "seed_agreement": 1.0,
                                          "order_consistency": None, "invalid": 0}}}


@pytest.fixture(scope="module")
def results() -> RunResults:
    problems = [Problem(id=f"t{i}", question="2+2?", answer="4", dataset="gsm8k") for i in range(4)]
    gsm_base = score_reasoning(problems, [["\\boxed{4}", "\\boxed{5}"]] * 2 + [["\\boxed{5}", "\\boxed{5}"]] * 2,
                               seeds=[0, 1])
    probe = lambda own, sw: ProbeResult(  # noqa: E731
        n=512, seeds=[0, 1, 2], judge=JUDGE, by_condition={
            "own": wilson_interval(own, 128), "swapped": wilson_interval(sw, 128),
            "blank": wilson_interval(14, 128), "generic": wilson_interval(24, 128)})
    base = Arm(name=BASE, stages=[Stage(recipe="sft", checkpoint="/runs/x/checkpoints/base/sft", metrics=sft_rows()),
                                  Stage(recipe="rlmt", checkpoint="/runs/x/checkpoints/base/rlmt",
                                        metrics=rlmt_rows(), lineage=lineage("base"))],
               evaluations={
                   "heldout_nll": NLLResult(n=128, nll=2.56, tokens=16384),
                   "thought_nll": ThoughtNLLResult(n=64, thought_nll=3.16, text_nll=2.7, thought_tokens=900,
                                                   text_tokens=5000),
                   "safety_rtp": safety(60, 100), "xstest": xstest(20), "truthfulqa": truthfulqa(False),
                   "judged_factuality": JudgedFactualityResult(n=64, seeds=[0, 1], judge=JUDGE,
                                                               score=bounded_mean_interval([0.5] * 64)),
                   "gsm8k": gsm_base,
                   "reward_gate": RewardGateResult(n=128, seeds=[0], judge=JUDGE, reward=wilson_interval(11, 128),
                                                   samples_per_prefix=4, passed=True),
                   "probe": probe(15, 2)})
    sip = Arm(name=SIP, stages=[Stage(recipe="pretrain", checkpoint="/runs/x/checkpoints/sip/pretrain",
                                      metrics=metrics_rows(20, 0.625, 0.746)),
                                Stage(recipe="sft", checkpoint="/runs/x/checkpoints/sip/sft", metrics=sft_rows()),
                                Stage(recipe="rlmt", checkpoint="/runs/x/checkpoints/sip/rlmt", metrics=rlmt_rows(),
                                      lineage=lineage("sip"))],
              evaluations={"heldout_nll": NLLResult(n=128, nll=2.60, tokens=16384), "safety_rtp": safety(10, 100),
                           "xstest": xstest(25), "truthfulqa": truthfulqa(True),
                           "reward_gate": RewardGateResult(n=128, seeds=[0], judge=JUDGE,
                                                           reward=wilson_interval(12, 128), samples_per_prefix=4,
                                                           passed=False, reasons=["invalid rate 0.080 > 0.05"]),
                           "probe": probe(16, 3)})
    ntp = Arm(name=NTP, stages=[Stage(recipe="ntp", checkpoint="/runs/x/checkpoints/ntp",
                                      metrics=[{"step": s, "loss": 2.6 - 0.01 * s, "heldout_nll": 2.55}
                                               for s in range(1, 6)])])
    return RunResults(
        run_name="tiny-replication", created_at="2026-11-23 12:00 UTC",
        config={"policy": "bundled:smollm2-135m-instruct", "pretrain": {"rollouts": 16, "beta": 0.1}},
        arms=[base, sip, ntp],
        comparisons=[Comparison(a=SIP, b=BASE, label="held-out prefixes", result=win_rate(100, 128)),
                     Comparison(a=NTP, b=BASE, label="held-out prefixes", result=win_rate(68, 128))],
        judge_audit=FAILED_AUDIT, notes=["Gate and probe means come from different draws."])


@pytest.fixture(scope="module")
def files(results):
    return render_report(results)  # the plots cost seconds: drawn once for the module


# --------------------------------------------------------------------------- markdown


def _main(md: str) -> str:
    """The report without its appendix (the exhaustive pairwise lists and the lineage)."""
    return md.split("## Appendix")[0]


def test_markdown_has_tables_n_seeds_and_decided_comparisons(files):
    md = files.markdown
    for heading in ("## Judges", "## Headline", "## Decided comparisons", "## Training", "## Safety",
                    "## Factuality", "## Reasoning", "## Likelihood (held-out NLL)", "## Judge audit details",
                    "## RLMT reward gate and thought-use probe", "## Appendix: every pairwise comparison",
                    "### safety_rtp", "### xstest", "### truthfulqa", "### gsm8k", "### probe"):
        assert heading in md, heading
    assert "| arm | safe rate | unsafe rate | invalid | n | seeds |" in md  # one judge: named in the caption
    assert "lower unsafe rate is better, judge temperature 1.0; judge: scripted:report-test (audit FAILED)*" in md
    assert "| arm | MC1 | MC2 | scorer | n | seeds |" in md
    decided = md.split("## Decided comparisons")[1].split("### Undecided")[0]
    # clearly separated: safe rate 40/100 vs 90/100, TruthfulQA MC2 oracle vs anti-oracle, 100/128 wins
    assert (f"safety rate (RTP): {SIP} 90.0% [82.6, 94.5] (n = 100) is higher than {BASE} 40.0% [30.9, 49.8] "
            "(n = 100); the intervals do not overlap.") in decided
    assert f"TruthfulQA MC2: {SIP} 97.4% [87.0, 99.5] (n = 40) is higher than {BASE}" in decided
    assert (f"win rate (pairwise): {SIP} 78.1% [70.2, 84.4] (n = 128) against {BASE}: the interval excludes 50%, "
            f"so the judge prefers {SIP} over {BASE}.") in decided
    assert f"{BASE}: probe reward: own thought 11.7% [7.2, 18.4] (n = 128) is higher than swapped thought" in decided
    # overlapping ones are not listed as decided, only counted ...
    assert "RLMT reward" not in decided and "XSTest" not in decided and NTP not in decided
    assert "cannot tell" not in _main(md)  # ... and the wall of "cannot tell X from Y" is gone
    undecided = md.split("### Undecided, by metric family")[1].split("## Training")[0]
    assert "**RLMT reward**: 1 of 1 comparisons undecided at n = 128" in undecided
    assert "**win rate between trained arms**: 1 of 2 comparisons undecided at n = 128" in undecided
    # ... and every comparison, decided or not, is in the appendix
    appendix = md.split("## Appendix")[1]
    assert "<details>" in appendix and "</details>" in appendix
    assert (f"| RLMT reward gate | {BASE} | {SIP} | 8.6% [4.9, 14.7] | 9.4% [5.4, 15.7] | 128 / 128 | undecided |"
            in appendix)
    assert re.search(rf"\| XSTest over-refusal \(xstest\) \| {BASE} \| {SIP} \| 8\.0% .* \| undecided \|", appendix)
    assert f"| win rate (pairwise) | {NTP} | {BASE} | 53.1% [44.5, 61.6] | vs 50% | 128 | undecided (interval " \
           "contains 50%) |" in appendix
    # n and seeds beside the numbers; partial results say "not run"
    assert "| 0 | 100 | 0–2 (3) |" in md
    assert f"| {NTP} | not run |" in md
    assert "**math500**: not run (no arm has this evaluation)." in md
    assert "**coherence**: not run" in md
    assert "heldout_nll has no interval" in md


def test_headline_table_marks_only_decided_differences(files):
    head = files.markdown.split("## Headline")[1].split("## Decided")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in head.splitlines() if line.startswith("| ")}
    assert rows["metric"] == f"| metric | A · {BASE} | B · {SIP} | C · {NTP} |"
    assert rows["safety rate (RTP)"] == ("| safety rate (RTP) | 40.0% [30.9, 49.8] n=100 | "
                                         "90.0% [82.6, 94.5] n=100 **> A** | not run |")
    assert "**>" not in rows["RLMT reward gate"] and "**>" not in rows["judged factuality"]
    assert rows["RLMT reward gate verdict"] == "| RLMT reward gate verdict | PASSED | FAILED | not run |"
    assert rows["held-out NLL (nats/token)"] == "| held-out NLL (nats/token) | 2.560 n=128 | 2.600 n=128 | not run |"
    # no arm is the untrained base model here: the pairwise rows say so
    assert rows["win rate vs base"] == "| win rate vs base |" + " no base model arm |" * 3


def _section(md: str, heading: str) -> str:
    return md.split(f"### {heading}\n")[1].split("\n#")[0]


def test_clustered_intervals_say_what_n_counts(files):
    """Several judge votes per prefix are clustered: the note says n counts prefixes, only where
    the intervals shown are clustered (a result without `clusters`, e.g. an older run's, has none)."""
    md, note = files.markdown, "(intervals clustered: the repeated judge votes or samples of one item count once"
    assert f"n = prefixes {note}" in _section(md, "Pairwise comparisons")
    assert f"n = prefixes {note}" in _section(md, "safety_rtp")
    assert f"n = problems {note}" in _section(md, "gsm8k")
    for unclustered in ("xstest", "truthfulqa", "judged_factuality", "reward_gate"):
        assert "intervals clustered" not in _section(md, unclustered), unclustered


def test_training_and_lineage_sections(files):
    md = files.markdown
    assert "| Progress per stage |" not in md and "*Progress per stage: mean over all logged steps" in md
    # loss 0.69 → 0.49 linearly over 20 steps: mean 0.590, last quarter (steps 16-20) 0.511
    assert re.search(rf"\| {re.escape(SIP)} \| 1\. pretrain \| 20 \| mean 0\.590 · last ¼ 0\.511 \|", md)
    assert f"| {SIP} | 1. pretrain | 2,000 | 400 (16.7%) | 20 |" in md  # judge calls, cache hits, skipped
    assert "2.560 → 2.600" in md  # held-out NLL logged during training
    for name in ("rollout-chosen.png", "dpo.png", "rlmt.png"):
        assert f"]({name})" in md
    lineage = md.split("## Appendix")[1].split("<summary>Lineage of the models compared</summary>")[1]
    assert "### " + SIP in lineage
    assert "| 2 | parquet-dataset | /runs/x/prepare/chunk-ab12 | 0.1.0+gabc | 2026-11-22T10:00:00 |" in lineage
    assert "Ancestry: not run (no lineage rows recorded for this arm)." in lineage  # the NTP arm
    assert "![training curves: base→SIP→SFT→RLMT #1 pretrain]" in md


def test_failed_audit_is_a_loud_warning_in_the_judges_box(results, files):
    md = files.markdown
    box = md.split("## Judges")[1].split("## Headline")[0]
    assert ("| training judge | scripted:report-test | **FAILED**: quality accuracy 0.55 < 0.7; position bias 0.93"
            in box)
    assert "rests on a judge that failed its audit" in box
    assert "Judge roles were not recorded for this run" in box
    assert "| quality | 20 | 160 | 55.0% |" in md.split("## Judge audit details")[1]
    html = files.html
    judges = html.index('<section id="judges" class="box warn">')
    assert judges < html.index('id="headline"') < html.index('id="training"')

    passed = results.model_copy(update={"judge_audit": {**FAILED_AUDIT, "passed": True, "reasons": []}})
    md = render_report(passed, with_plots=False).markdown
    assert "passed (position bias 0.930)" in md and "failed its audit" not in md
    assert "scripted:report-test (audit PASSED)" in md

    none = results.model_copy(update={"judge_audit": None})
    md = render_report(none, with_plots=False).markdown
    assert "| training judge | not recorded | **not audited** |" in md
    assert "No judge audit was supplied" in md and "scripted:report-test (audit not audited)" in md


def test_a_proxy_judge_is_never_shown_as_passing_its_audit():
    from tiny_fixture import tiny_results

    md = render_report(tiny_results(), with_plots=False).markdown
    assert "PASSED its audit" not in md and "✓" not in md
    assert "passes by construction (a proxy stand-in): no evidence about judge quality" in md


def test_safety_names_every_rtp_category_and_both_xstest_halves():
    from sip_core.evaluation.safety import RTP_CATEGORIES

    groups = {g: wilson_interval(min(i, 4), 4) if i < 6 else wilson_interval(0, 0)
              for i, g in enumerate(RTP_CATEGORIES)}
    rtp = SafetyResult(n=24, seeds=[0], judge=JUDGE, unsafe=wilson_interval(6, 24), safe=wilson_interval(18, 24),
                       safe_by_group=groups)
    xs = RefusalResult(n=8, over_refusal=wilson_interval(1, 8), unsafe_refusal=wilson_interval(6, 8),
                       unsafe_compliance=wilson_interval(2, 8),
                       judged_safe={"safe": wilson_interval(8, 8), "unsafe": wilson_interval(5, 8)})
    md = render_report(RunResults(run_name="s", arms=[Arm(name="a", evaluations={"safety_rtp": rtp, "xstest": xs})]),
                       with_plots=False).markdown
    assert "| RTP category | a |" in md
    for g in RTP_CATEGORIES[:6]:
        assert f"| {g} | " in md
    assert "| flirtation | 0.0% [0.0, 49.0] n=4 |" in md and "| threat | none judged (n = 0) |" in md
    assert "| safety rate (RTP) | 75.0% [55.1, 88.0] n=24 |" in md  # the headline reads the judged-safe share
    assert ("| a | 12.5% [2.2, 47.1] | 75.0% [40.9, 92.9] | 25.0% [7.1, 59.1] | 100.0% [67.6, 100.0] / "
            "62.5% [30.6, 86.3] | xstest-strmatch |") in md


def test_partial_and_empty_results_render():
    empty = render_report(RunResults(run_name="empty"))
    assert "not run" in empty.markdown and not empty.images
    assert "This run decides no comparison" in empty.markdown
    solo = Arm(name="solo", stages=[Stage(recipe="sft")],
               evaluations={"safety_rtp": None, "heldout_nll": NLLResult(n=0, nll=math.nan)})
    one = RunResults(run_name="one", arms=[solo])
    md = render_report(one).markdown
    assert "no metrics logged" in md and "**safety_rtp**: not run" in md and "| solo | — |" in md
    # a result with n = 0 (every judgment unparseable) says so instead of printing NaN
    zero = RunResults(run_name="zero", arms=[Arm(name="a", evaluations={"safety_rtp": safety(0, 0)}),
                                             Arm(name="b", evaluations={"safety_rtp": safety(1, 3)})])
    md = render_report(zero).markdown
    assert "no valid items (n = 0)" in md and "nan" not in md.lower()


# --------------------------------------------------------------------------- html and pngs


def test_html_is_self_contained_and_pngs_decode(files):
    html = files.html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "<link" not in html and "<script" not in html and "@import" not in html
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    names = {"win-rates.png", "probe.png", "heldout-nll.png", "rollout-chosen.png", "dpo.png", "rlmt.png"}
    assert names <= set(files.images)
    assert sum(n.startswith("training-") for n in files.images) == 6  # every stage with metrics
    assert len(imgs) == len(files.images) == 12
    assert sorted(base64.b64decode(b) for b in imgs) == sorted(files.images.values())
    for name, data in files.images.items():
        im = PIL.open(io.BytesIO(data))
        im.load()
        assert im.format == "PNG" and im.width > 200 and im.height > 100, name
    assert html.count("<table>") >= 15
    for name in files.images:  # the markdown links every PNG by file name
        assert f"]({name})" in files.markdown


# --------------------------------------------------------------------------- save


def _checkpoint(tmp_path: Path, name: str, ctx: WriteContext) -> Manifest:
    return write_json_artifact(str(tmp_path / "ckpt" / name), "checkpoint.json", {"name": name}, ctx, "checkpoint")


def test_save_report_writes_files_manifest_and_lineage(results, files, tmp_path):
    db = LineageDB(tmp_path / "lineage.duckdb")
    base_ctx = WriteContext(config={}, config_hash="c0", parents=[], lineage=db)
    parents = [_checkpoint(tmp_path, n, base_ctx) for n in ("base", "sip")]
    ctx = WriteContext(config={"run": "tiny"}, config_hash="c1", parents=parents, lineage=db)
    uri = str(tmp_path / "report")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "stale.png").write_bytes(b"old")
    manifest = save_report(results, uri, None, ctx)
    out = tmp_path / "report"
    assert not (out / "stale.png").exists()
    assert (out / "report.md").read_text() == files.markdown
    assert (out / "report.html").read_text() == files.html
    for name, data in files.images.items():
        assert (out / name).read_bytes() == data
    assert manifest.kind == "report" and manifest.parents == [p.artifact_id for p in parents]
    assert len(manifest.files) == 3 + len(files.images)
    assert manifest.stats["judge_audit_passed"] is False and manifest.stats["arms"] == [BASE, SIP, NTP]
    assert json.loads((out / "_manifest.json").read_text())["artifact_id"] == manifest.artifact_id
    kinds = {r["uri"]: r["kind"] for r in db.ancestry(manifest.uri)}
    assert kinds[manifest.uri] == "report" and {p.uri for p in parents} <= set(kinds)
    # results.json is strict JSON and reads back into the same result types
    raw = (out / "results.json").read_text()
    assert "NaN" not in raw
    back = RunResults.model_validate_json(raw)
    ev = back.arms[0].evaluations
    assert isinstance(ev["safety_rtp"], SafetyResult) and isinstance(ev["xstest"], RefusalResult)
    assert isinstance(ev["probe"], ProbeResult) and isinstance(ev["thought_nll"], ThoughtNLLResult)
    assert isinstance(back.comparisons[0].result, WinRateResult)
    assert render_report(back, with_plots=False).markdown == render_report(results, with_plots=False).markdown


# --------------------------------------------------------------------------- browser


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.slow
def test_report_opens_in_headless_chromium(results, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary (Debian: apt-get install -y chromium)")
    save_report(results, str(tmp_path / "report"))
    page = (tmp_path / "report" / "report.html").as_uri()
    shot = tmp_path / "screenshot.png"
    common = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,4000"]
    subprocess.run([*common, f"--screenshot={shot}", page], capture_output=True, timeout=120, check=True)
    im = PIL.open(shot)
    assert im.size == (1280, 4000)
    low, high = im.convert("L").getextrema()
    assert high - low > 100  # something was drawn, not a blank page
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert "Run report: tiny-replication" in dom and "<b>FAILED</b>: quality accuracy" in dom
    assert dom.count("<table>") >= 15
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', dom)
    assert len(imgs) == 12
    for data in imgs:
        png = PIL.open(io.BytesIO(base64.b64decode(data)))
        png.load()
        assert png.width > 200
    keep = Path("/tmp/sip-report-screenshot.png")  # left for a human to look at
    shutil.copy(shot, keep)


def test_an_audit_gated_on_some_dimensions_says_which_and_reports_the_rest():
    from sip_core.report.judge import JudgeView, audit_cell

    audit = {"judge": "/ckpt/judge/final", "passed": True, "position_bias": 0.43, "gated_dimensions": ["quality"],
             "dimensions": {"quality": {"accuracy": 0.985}, "factuality": {"accuracy": 0.546}}}
    cell = audit_cell(JudgeView(audit), None, {"backend": "local", "model": "/ckpt/judge/final"})
    assert cell.startswith("passed") and "on quality" in cell and "not gated: factuality 0.546" in cell
    every = audit | {"gated_dimensions": ["factuality", "quality"]}
    assert "not gated" not in audit_cell(JudgeView(every), None, {"backend": "local", "model": "x"})
