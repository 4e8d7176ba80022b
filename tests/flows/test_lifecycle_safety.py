"""The safety lifecycle (lifecycle.setting safety: configs/lifecycle-safety-tiny.yaml's shape at the
smoke preset's sizes) on a corpus with planted unsafe documents on both sides of the held-out
split: the rewriter trained first and rewriting the unsafe partition only, NTP and SIP(safety)
trained on it, every arm evaluated on Table 1's safety row (win rate on standard and unsafe
prefixes, RTP over its seven categories, both XSTest halves, the unsafe continuations' safety),
one report; a rerun reuses every stage and calls nothing; a corpus stage 1 does not flag is one
line and exit 2 before any model call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from conftest import DATA, c4_records, write_jsonl_gz

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SAFETY = ["lifecycle.setting=safety", "pretrain.data=unsafe", "lifecycle.rewrite_limit=32",
          "lifecycle.train_rewriter=true", "rewriter_train.steps=1", "rewriter_train.batch_size=2",
          "rewriter_train.group_size=2", "rewriter_train.suffix_tokens=8", "rewriter_train.max_prefix_tokens=24",
          "rewriter_train.validation_rows=2", "rewriter_train.keep_after_finish=0",
          "rewriter_train.allow_no_update=true", "rewriter_train.judge_seeds=1",
          "eval.suites=[heldout_nll, winrate, safety_rtp, xstest, winrate_unsafe, safety_unsafe_prefixes]",
          "eval.safety_prompts=7", "eval.xstest_prompts=1", "data.heldout_fraction=0.3"]


def planted_corpus(path: Path) -> Path:
    """60 C4 documents and 24 more with six LDNOOBW words each (stage 1 flags them at 5)."""
    terms = [t.strip() for t in (DATA / "safety/wordlists/ldnoobw/en.txt").read_text().splitlines()]
    bad = [t for t in terms if t.isalpha() and len(t) > 4][:6]
    records = c4_records(84)
    clean = [{"id": f"c4-{i}", **r} for i, r in enumerate(records[:60])]
    planted = []
    for j, rec in enumerate(records[60:]):
        words = rec["text"].split()
        for k, w in enumerate(bad):
            words.insert((k + 1) * max(1, len(words) // 7), w)
        planted.append({"id": f"planted-unsafe-{j}", "text": " ".join(words)})
    return write_jsonl_gz(path, clean + planted)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from flows.lifecycle import lifecycle
    from sip_core.config import LifecycleParams

    root = tmp_path_factory.mktemp("safety-lifecycle")
    corpus = planted_corpus(root / "corpus.jsonl.gz")
    params = LifecycleParams(preset="smoke", overrides=[f"run.root={root / 'run'}", f"data.source={corpus}", *SAFETY])
    return root / "run", lifecycle(params), lifecycle(params)


def _results(run: dict) -> dict:
    return json.loads((Path(run["report"].html).parent / "results.json").read_text())


def test_the_safety_arms_train_on_the_unsafe_partition_with_the_trained_rewriters_rewrites(runs):
    root, first, _ = runs
    arms = {a["name"]: a for a in _results(first)["arms"]}
    assert set(arms) == {"base", "base→NTP", "base→SIP(safety)"}
    assert [s["recipe"] for s in arms["base→SIP(safety)"]["stages"]] == ["pretrain-dpo"]
    assert [s["recipe"] for s in arms["base→NTP"]["stages"]] == ["pretrain-ntp"]
    assert not list(root.glob("prepare/thoughts-*")) and not list(root.glob("train/sft-*"))
    batches = [m.parent for m in root.glob("rewrites/*/batch-*/_manifest.json")]
    rows = pl.concat([pl.read_parquet(list(b.rglob("*.parquet"))) for b in batches])
    assert rows["filter_label"].unique().to_list() == ["unsafe"] and rows.height > 0
    rewriters = rows["model_id"].unique().to_list()  # the trained checkpoint rewrote, in-process
    assert len(rewriters) == 1 and rewriters[0].startswith("local:") and "/train/rewriter-" in rewriters[0]


def test_every_arm_is_evaluated_on_table_1s_safety_row(runs):
    _, first, _ = runs
    results = _results(first)
    for arm in results["arms"]:
        ev = arm["evaluations"]
        assert len(ev["safety_rtp"]["by_group"]) == 7, arm["name"]  # every RTP-challenging category
        assert ev["safety_unsafe_prefixes"]["n"] > 0
        assert {"over_refusal", "unsafe_compliance"} <= set(ev["xstest"])  # both XSTest halves
    kinds = {(c["a"], c["b"], c["kind"]) for c in results["comparisons"]}
    for pair in (("base→SIP(safety)", "base"), ("base→NTP", "base"), ("base→SIP(safety)", "base→NTP")):
        assert {(*pair, "winrate"), (*pair, "winrate_unsafe")} <= kinds
    md = Path(first["report"].markdown).read_text()
    identity = next(line for line in md.splitlines() if line.startswith("Run **"))
    assert "safety setting, arms trained on the unsafe partition" in identity and "sft" not in identity
    for row in ("| win rate vs base |", "| win rate vs base (unsafe prefixes) |", "| safety rate (RTP) |",
                "| safety rate (unsafe prefixes) |"):
        assert row in md


def test_a_rerun_reuses_every_stage_and_calls_no_model(runs):
    _, first, second = runs
    assert first["judge_calls"] > 0
    assert second["judge_calls"] == 0, second["calls"]
    assert second["reused_stages"] == 2 and second["cached_evals"] == 3
    assert second["finals"] == first["finals"]


def test_a_corpus_stage_1_does_not_flag_is_one_line_before_any_model_call(tmp_path):
    cmd = [sys.executable, "-m", "flows.cli", "run", "lifecycle", "--config",
           str(ROOT / "configs" / "lifecycle-smoke.yaml"), "--set", f"run.root={tmp_path}",
           "--set", "lifecycle.setting=safety", "--set", "pretrain.data=unsafe"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    errors = [line for line in res.stderr.splitlines() if line.startswith("sip: error:")]
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(errors) == 1 and "pretrain.data=unsafe" in errors[0] and "stage 1 flagged nothing" in errors[0]
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.glob("rewrites/*")) and not list(tmp_path.glob("audit*"))
    assert not list(tmp_path.rglob("model.safetensors"))
