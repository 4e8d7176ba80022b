"""Thought insertion against a fake teacher: only rows whose text outside the tags is intact are kept."""

from __future__ import annotations

import polars as pl

from fake_openai import FakeOpenAI
from llm_job_fixtures import ROOT, blocks, chunks  # noqa: F401  (chunks: the fixture)
from sip_core.config import load_config
from sip_core.infra.run_context import RunContext
from sip_core.llm.factory import open_llm


def test_thought_insertion_gate_keeps_only_faithful_rows(chunks, tmp_path):
    from sip_core.augment.thought_insertion import insert_thoughts

    root, manifest = chunks
    state = {"n": 0}

    def teacher(messages):
        text = blocks(messages)["DOCUMENT"]
        state["n"] += 1
        mid = text.index(" ", len(text) // 2)
        if state["n"] % 3 == 0:  # a teacher that edits the text must be caught
            return text[:mid] + "<think>I should summarise.</think> totally different words"
        if state["n"] % 3 == 1:
            return text[:mid] + "<think>Next the author explains why.</think>" + text[mid:]
        return "no tags at all"
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"run.root={tmp_path}", "teacher.backend=openai",
                                                         "teacher.model=fake", "judge.parse_retries=0"])
    with FakeOpenAI(latency=0.0, responder=teacher) as srv:
        cfg.teacher.base_url = srv.base_url
        out = insert_thoughts(RunContext(cfg), manifest, open_llm(cfg, "teacher"), limit=30)
    s = out.stats
    assert s["rows"] == 30 and s["kept"] == 10 and s["rejected"] == 10 and s["malformed"] == 10
    kept = pl.read_parquet([f for f in out.files if "/ok/" in f])
    assert (kept["n_thoughts"] == 1).all() and set(kept["half"]) <= {"sft", "rl"}
