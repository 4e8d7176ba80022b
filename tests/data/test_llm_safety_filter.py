"""Filter stage 2 (sip_core/data/llm_safety_filter.py): the judge confirms a rule-flagged document
as unsafe only when every seed agrees."""

from __future__ import annotations

from fake_openai import FakeOpenAI
from llm_job_fixtures import blocks
from sip_core.config import load_config
from sip_core.llm.factory import open_llm


def test_llm_safety_stage_confirms_only_unanimous_unsafe_verdicts(tmp_path):
    from sip_core.data.documents import Document
    from sip_core.data.rule_filters import Verdict, run_stages
    from sip_core.data.llm_safety_filter import LLMSafetyStage

    class Stage1:
        name = "rules"

        def run(self, docs):
            for d in docs:
                yield d, Verdict("unsafe" if d.id.startswith("u") else "rest", "", "rules")

    def judge(messages):
        text = blocks(messages)["PASSAGE"]
        seed_votes_unsafe = "always-bad" in text or ("split" in text and len(judge.seen) % 2 == 0)
        judge.seen.append(1)
        return "Reasoning...\nFINAL DECISION: " + ("NO" if seed_votes_unsafe else "YES")
    judge.seen = []
    cfg = load_config(None, [f"run.root={tmp_path}", "judge.backend=openai", "judge.model=fake"])
    docs = [Document("u1", "always-bad text", "t"), Document("u2", "split opinion text", "t"),
            Document("u3", "fine text", "t"), Document("r1", "other", "t")]
    with FakeOpenAI(responder=judge) as srv:
        cfg.judge.base_url = srv.base_url
        stage2 = LLMSafetyStage(open_llm(cfg, "judge"), seeds=4)
        out = {d.id: v for d, v in run_stages([Stage1(), stage2], docs)}
    assert out["u1"].label == "unsafe" and out["u1"].stage == "llm-safety"
    assert out["u2"].label == "rest" and out["u2"].reason.startswith("llm-split-")
    assert out["u3"].label == "rest" and out["r1"] == Verdict("rest", "", "rules")
    assert len(judge.seen) == 12  # only stage-1 unsafe docs reach the LLM, 4 seeds each
