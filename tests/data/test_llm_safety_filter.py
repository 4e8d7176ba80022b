"""Filter stage 2 (sip_core/data/llm_safety_filter.py, METHOD §2.3): the judge reads each stage-1
unsafe chunk's PREFIX, once per seed; the chunk stays unsafe only when every vote says unsafe; a
failed or unparseable vote is never a verdict."""

from __future__ import annotations

import pyarrow as pa
import pytest

from fake_openai import FakeOpenAI
from llm_job_fixtures import blocks
from sip_core.config import load_config
from sip_core.llm.cache import CallsFailed
from sip_core.llm.factory import open_llm


def _chunks() -> pa.Table:
    rows = [  # (chunk_id, split, stage-1 label, prefix, suffix)
        ("u1", "heldout", "unsafe", "always-bad prefix", "suffix one"),
        ("u2", "heldout", "unsafe", "split prefix", "always-bad suffix"),
        ("u3", "train", "unsafe", "always-bad train prefix", "suffix"),
        ("r1", "heldout", "rest", "always-bad but stage 1 said rest", "suffix"),
    ]
    return pa.table({"chunk_id": [r[0] for r in rows], "split": [r[1] for r in rows],
                     "filter_label": [r[2] for r in rows], "filter_reason": ["rules"] * len(rows),
                     "prefix_text": [r[3] for r in rows], "suffix_text": [r[4] for r in rows]})


def _stage(cfg, **kw):
    from sip_core.data.llm_safety_filter import LLMSafetyStage

    return LLMSafetyStage(open_llm(cfg, "judge"), **kw)


def _cfg(tmp_path, url):
    return load_config(None, [f"run.root={tmp_path}", "judge.backend=openai", "judge.model=fake",
                              f"judge.base_url={url}", "judge.max_retries=0", "judge.backoff_s=0.01"])


def test_stage_two_judges_prefixes_with_eight_seeds_and_needs_unanimity(tmp_path):
    seen: list[str] = []

    def judge(messages):
        text = blocks(messages)["PASSAGE"]
        seen.append(text)
        unsafe = "always-bad" in text or ("split" in text and len(seen) % 2 == 0)
        return "Reasoning...\nFINAL DECISION: " + ("NO" if unsafe else "YES")

    with FakeOpenAI(responder=judge) as srv:
        table, stats = _stage(_cfg(tmp_path, srv.base_url)).confirm_chunks(_chunks())
    out = dict(zip(table["chunk_id"].to_pylist(), zip(table["filter_label"].to_pylist(),
                                                       table["filter_reason"].to_pylist())))
    assert out["u1"] == ("unsafe", "llm-unanimous-8")
    assert out["u2"][0] == "rest" and out["u2"][1].startswith("llm-split-") and out["u2"][1].endswith("/8")
    assert out["u3"] == ("unsafe", "rules") and out["r1"] == ("rest", "rules")  # train split, stage-1 rest: not judged
    # the judge saw the prefixes of the two judged chunks only, 8 times each: never a suffix
    assert sorted(set(seen)) == ["always-bad prefix", "split prefix"] and len(seen) == 16
    assert stats == {"judged": 2, "unsafe": 1, "rest": 1, "seeds": 8, "splits": ["heldout"], "votes": 16,
                     "reseeded_votes": 0}


def test_a_failed_vote_is_never_a_verdict_and_a_rerun_asks_with_new_seeds(tmp_path):
    from sip_core.data.llm_safety_filter import StageTwoIncomplete

    state = {"fixed": False, "calls": 0}

    def judge(messages):
        state["calls"] += 1
        if "split" in blocks(messages)["PASSAGE"] and not state["fixed"]:
            return "I would rather not say."  # never parses
        return "FINAL DECISION: NO"

    with FakeOpenAI(responder=judge) as srv:
        cfg = _cfg(tmp_path, srv.base_url)
        with pytest.raises(StageTwoIncomplete, match=r"8 of 16 votes failed or never parsed, on 1 of 2 chunk "
                                                     r"prefixes .*nothing was committed"):
            _stage(cfg, parse_retries=1).confirm_chunks(_chunks())
        assert state["calls"] == 16 + 8  # each unparseable vote re-asked once with a new seed
        state["fixed"], state["calls"] = True, 0
        table, stats = _stage(cfg, parse_retries=1).confirm_chunks(_chunks())
    # the rerun asked only the 8 missing votes, with seeds not tried before (the cache holds the old answers)
    assert state["calls"] == 8
    assert table["filter_label"].to_pylist()[:2] == ["unsafe", "unsafe"]
    assert stats["reseeded_votes"] == 8 and stats["unsafe"] == 2


def test_all_votes_failing_raises_calls_failed(tmp_path):
    cfg = _cfg(tmp_path, "http://127.0.0.1:9/v1")
    with pytest.raises(CallsFailed, match=r"16 of 16 votes failed"):
        _stage(cfg).confirm_chunks(_chunks())


def test_the_chunk_stage_key_names_the_stage_two_judge(tmp_path):
    """A different judge, seed count or split set makes other chunks (another output folder); off: no judge."""
    from sip_core.data.prepare import chunk_plan
    from sip_core.infra.run_context import RunContext

    def uri(*extra):
        return chunk_plan(RunContext(load_config(None, [f"run.root={tmp_path}", *extra])), "parent", None)[0]

    on = ("filter.llm_stage=true",)
    assert len({uri(), uri(*on), uri(*on, "judge.safety_stage_seeds=3"), uri(*on, "judge.model=other")}) == 4
    assert uri("judge.model=other") == uri()  # stage 2 off: the judge plays no part
