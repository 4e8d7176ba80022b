"""Fault injection against the fake OpenAI server, over the evaluation jobs (one model's judged
evaluations, a pairwise win rate) and the judge audit (teacher corruptions, then the judge), with
the faults of tests/flows/test_faults.py.

For each fault and job:
- every call failed: CallsFailed with the counts, nothing committed;
- some calls failed: the result comes back partial, with the failed calls counted, and nothing
  built from it is committed (a rerun must not reuse it);
- once the endpoint recovers, a rerun makes exactly the calls that failed (the audit: and the
  judgments of the pairs its recovered corruptions add), and a third run none.
run.max_failed_share is the limit of every job. One fault per job runs by default; the rest of the matrix is slow.
"""

from __future__ import annotations

import json

import pytest

from fake_openai import FakeOpenAI, free_port
from llm_job_fixtures import ROOT, blocks, chunks  # noqa: F401  (chunks: the fixture)
from sip_core.config import load_config
from sip_core.infra.artifacts import ArtifactRef
from sip_core.infra.run_context import RunContext
from sip_core.llm.factory import open_llm
from test_faults import FAULTS

FAST = {("evaluate", "500"), ("compare", "401"), ("audit", "down")}
ROLE = {"evaluate": "eval_judge", "compare": "eval_judge", "audit": "judge"}


def _params(*jobs):
    return [pytest.param(job, fault, marks=() if (job, fault) in FAST else pytest.mark.slow)
            for job in jobs for fault in FAULTS]


def judge_answer(messages) -> str:
    """A healthy judge for every prompt these jobs send (and a teacher that corrupts by reversing)."""
    found = blocks(messages)
    if "HUMAN CONTINUATION" in found:
        return '{"label": "No Hallucination"}'
    if "CONTINUATION A" in found:
        return "TIE"
    if "PASSAGE" in found:
        return "FINAL DECISION: YES"
    if "ORIGINAL CONTINUATION" in found:
        return "MODIFIED CONTINUATION: " + " ".join(reversed(found["ORIGINAL CONTINUATION"].split()))
    return "Conclusion: Option 1"


def _cfg(root, job: str, url: str, *extra: str):
    roles = [ROLE[job], "teacher"] if job == "audit" else [ROLE[job]]
    return load_config(ROOT / "configs" / "smoke.yaml", [
        f"run.root={root}", "judge.parse_retries=0", "eval.suites=[judged_factuality,winrate]",
        "judge.audit_llm_corruptions=true", "judge.audit_both_modes=false", "judge.audit_injection=false", *extra,
        *(f"{r}.{k}" for r in roles for k in ("backend=openai", "model=fake", f"base_url={url}", "max_retries=1",
                                               "backoff_s=0.01", "backoff_max_s=0.02", "timeout_s=5"))])


def _heldout_prefixes(root, manifest) -> list[str]:
    from sip_core.evaluation.suite import heldout_rows

    return [r["prefix_text"] for r in heldout_rows(_cfg(root, "evaluate", "http://unused"), manifest)]


CONTINUATIONS = {side: [f"model {side} says thing number {i} about the topic at hand." for i in range(4)]
                 for side in ("A", "B")}


def _evaluate(root, url, manifest, *extra: str):
    """What evaluate_task runs: the committed evaluation, else a fresh one. (result, failed calls, done)"""
    from sip_core.evaluation.store import EvaluationStore

    cfg = _cfg(root, "evaluate", url, *extra)
    judge = open_llm(cfg, "eval_judge")
    store = EvaluationStore(RunContext(cfg), cfg.model.policy, ArtifactRef.of(manifest), judge.backend.model_id)
    out = store.load() or store.evaluate(judge, None)
    return out, sum(out.failed_calls.values()), store.load() is not None


def _compare(root, url, manifest):
    """compare_task's library call on two models' fixed continuations: (result, failed calls, done)."""
    from sip_core.evaluation.store import ModelEvaluation, compare_evaluations

    cfg = _cfg(root, "compare", url)
    a, b = (ModelEvaluation(model=s, uri=f"eval/{s}", continuations=CONTINUATIONS[s]) for s in ("A", "B"))
    out = compare_evaluations(RunContext(cfg), a, b, ArtifactRef.of(manifest), open_llm(cfg, "eval_judge"), None)
    assert out.results["winrate"]["details"].get("failed_calls", 0) == out.failed_calls.get("winrate", 0)
    return out, sum(out.failed_calls.values()), not out.partial


def _broken(job: str, root, manifest) -> list[str]:
    """Texts whose prompts fail: two of the held-out prefixes, or two of A's continuations."""
    if job == "compare":
        return CONTINUATIONS["A"][:2]
    return [p[:40] for p in _heldout_prefixes(root, manifest)[:2]]


RUN = {"evaluate": _evaluate, "compare": _compare}
FAILS_AT_FIRST = {"evaluate": 2, "compare": 4}  # 2 prefixes x 1 seed; 2 prefixes x 2 orders x 1 seed
JOB_NAME = {"evaluate": "judged factuality", "compare": "win rate"}


def _faults(fault: str, broken: list[str]):
    """(every call fails, the calls whose prompt holds a broken text fail): the fake server's faults."""
    def some(n, messages):
        text = " ".join(m["content"] for m in messages)
        return (fault if fault != "down" else "500") if any(b in text for b in broken) else None

    return (lambda n, m: fault if fault != "down" else None), some


@pytest.mark.parametrize("job, fault", _params("evaluate", "compare"))
def test_fault_commits_nothing_and_a_rerun_asks_exactly_the_failed_calls(chunks, tmp_path, job, fault):
    from sip_core.llm.cache import CallsFailed

    _, manifest = chunks
    run = RUN[job]
    every, fault_for = _faults(fault, _broken(job, tmp_path, manifest))

    # 1. every call fails: no result, the message counts them, nothing committed
    with FakeOpenAI(faults=every, slow_s=8, retry_after=0.01,
                    responder=judge_answer) as srv:
        url = f"http://127.0.0.1:{free_port()}/v1" if fault == "down" else srv.base_url
        with pytest.raises(CallsFailed, match=rf"{JOB_NAME[job]}: (\d+) of \1 model calls failed"):
            run(tmp_path, url, manifest)
    assert not list(tmp_path.rglob("eval/**/_manifest.json")) and not list(tmp_path.rglob("audits/**/_manifest.json"))

    # 2. some calls fail: the result is partial, counts them and is not committed
    with FakeOpenAI(faults=fault_for, slow_s=8, retry_after=0.01, responder=judge_answer) as srv:
        first, failed, done = run(tmp_path, srv.base_url, manifest)
        assert failed == FAILS_AT_FIRST[job] and not done, first
        assert srv.stats()["counts"].get("ok", 0) == FAILS_AT_FIRST[job]  # the healthy half, once each
        if job == "evaluate":  # what the CLI and the Prefect artifact print
            from sip_core.report.summaries import results_markdown

            assert "judged_factuality 2 failed" in results_markdown("m", first.results)

        # 3. the endpoint recovers: a rerun asks exactly the failed calls, and is complete
        srv.faults = None
        srv.reset()
        second, failed, done = run(tmp_path, srv.base_url, manifest)
        assert srv.stats()["requests"] == FAILS_AT_FIRST[job], srv.stats()
        assert failed == 0 and done, second
        srv.reset()  # 4. and a third run asks nothing at all
        run(tmp_path, srv.base_url, manifest)
        assert srv.stats()["requests"] == 0, srv.stats()


def _audit(root, url, manifest):
    """audit_task's library call, the teacher corrupting (P4): (report, saved)."""
    from sip_core.judge.audit import run_audit

    cfg = _cfg(root, "audit", url)
    _, report, saved = run_audit(RunContext(cfg), manifest, open_llm(cfg, "judge"), open_llm(cfg, "teacher"))
    return report, saved


def _committed_pairs_or_audits(root) -> list:
    return list(root.rglob("prepare/pairs-*/_manifest.json")) + list(root.rglob("audits/**/_manifest.json"))


@pytest.mark.parametrize("job, fault", _params("audit"))
def test_audit_fault_commits_no_pairs_or_report_and_a_rerun_asks_only_the_failed_calls(chunks, tmp_path, job,
                                                                                        fault):
    from sip_core.infra import store
    from sip_core.llm.cache import CallsFailed

    _, manifest = chunks
    split = "heldout" if any("/heldout/" in f for f in manifest.files) else "train"
    first_rows = [r for f in manifest.files if f"/{split}/" in f for r in store.read_parquet(f).to_pylist()][:2]
    every, fault_for = _faults(fault, [r["suffix_text"][:40] for r in first_rows])

    with FakeOpenAI(faults=every, slow_s=8, retry_after=0.01, responder=judge_answer) as srv:
        url = f"http://127.0.0.1:{free_port()}/v1" if fault == "down" else srv.base_url
        with pytest.raises(CallsFailed, match=r"audit corruptions: (\d+) of \1 model calls failed"):
            _audit(tmp_path, url, manifest)  # chunks x 3 kinds: no pairs at all, not rule pairs only
    assert not _committed_pairs_or_audits(tmp_path)

    def asked(srv) -> tuple[dict[str, bool], int]:
        """Each distinct request the server got -> whether it failed (by the fault rule), and all requests."""
        return {json.dumps(b["messages"], sort_keys=True): fault_for(0, b["messages"]) is not None
                for b in srv.bodies}, len(srv.bodies)

    with FakeOpenAI(faults=fault_for, slow_s=8, retry_after=0.01, responder=judge_answer, record_bodies=True) as srv:
        first, saved = _audit(tmp_path, srv.base_url, manifest)
        failed, (before, _) = first.failed_calls, asked(srv)
        assert saved is None and not _committed_pairs_or_audits(tmp_path) and not first.passed
        assert failed["corruptions"] == 6 and failed["judge"] > 0, failed  # 2 chunks x 3 kinds
        # a failed judgment is neither a right nor a wrong verdict: it is counted as an error only
        assert sum(d["invalid"] for d in first.dimensions.values()) == failed["judge"]
        assert round(first.error_rate * first.calls) == failed["judge"]

        srv.faults = None
        srv.reset()
        second, saved = _audit(tmp_path, srv.base_url, manifest)
        again, requests = asked(srv)
        # every failed call is asked again, once; no call that came back is; the rest are the
        # recovered corruptions' new pairs, never asked before
        assert {r for r, bad in before.items() if bad} <= set(again) and requests == len(again)
        assert not {r for r, bad in before.items() if not bad} & set(again)
        assert len(again) > sum(before.values()) and second.calls > first.calls
        assert saved is not None and second.failed_calls == {} and len(_committed_pairs_or_audits(tmp_path)) == 2
        srv.reset()
        _audit(tmp_path, srv.base_url, manifest)
        assert srv.stats()["requests"] == 0, srv.stats()


@pytest.mark.parametrize("share, raises", [(0.25, True), pytest.param(0.5, False, marks=pytest.mark.slow),
                                           (None, False)])
def test_run_max_failed_share_is_the_limit_of_every_job(chunks, tmp_path, share, raises):
    """2 of 4 calls fail: over a limit of 0.25 the job raises with the counts and commits nothing;
    at 0.5 or with None (only all failed is fatal) it commits the healthy items only."""
    import test_faults
    from sip_core.augment.thought_insertion import insert_thoughts
    from sip_core.llm.cache import CallsFailed

    _, manifest = chunks
    setting = f"run.max_failed_share={'null' if share is None else share}"
    teacher_broken = [r["suffix_text"][:40] for r in test_faults._first_rows(manifest, 2)]
    broken = _broken("evaluate", tmp_path, manifest) + teacher_broken
    with FakeOpenAI(faults=_faults("500", broken)[1], responder=lambda m: judge_answer(m) if "DOCUMENT" not in
                    blocks(m) else test_faults.good_answer(m)) as srv:
        cfg = test_faults._cfg(tmp_path, "thoughts", srv.base_url)
        cfg.run.max_failed_share = share
        thoughts = lambda: insert_thoughts(RunContext(cfg), manifest, open_llm(cfg, "teacher"), limit=4)  # noqa: E731
        if raises:
            with pytest.raises(CallsFailed, match="judged factuality: 2 of 4 model calls failed"):
                _evaluate(tmp_path, srv.base_url, manifest, setting)
            with pytest.raises(CallsFailed, match="thoughts: 2 of 4 model calls failed"):
                thoughts()
            assert not list(tmp_path.rglob("_manifest.json"))
            return
        evaluation, failed, done = _evaluate(tmp_path, srv.base_url, manifest, setting)
        assert failed == 2 and not done and evaluation.results["judged_factuality"]["n"] == 2
        made = thoughts()
        assert made.stats["failed"] == 2 and made.stats["rows"] == 4
