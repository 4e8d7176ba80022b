"""Fault injection against the fake OpenAI judge, over the training recipes (pretrain, rlmt): a
failure is never data.

Step 1 judges three documents (pretrain: three candidate sets; rlmt: three groups). Every call
about the first document the server sees fails with one fault, every call about the second with
another (500 + malformed body, 401 + a 429 storm, answers past the timeout + 500), the third's
calls are answered (ties / all-zero rewards: no signal, so step 1
makes no update). Two of three skipped passes pretrain.max_invalid_share (rlmt.max_invalid_share) 0.5, so:
- the run stops at step 1 in one line naming the skipped counts, with no final/ and no checkpoint
  (no update was made);
- once the endpoint recovers, a rerun in the same run folder trains from step 1 again; its step 1
  sends exactly the requests that failed (same bodies: the rollouts are seeded), none of the
  answered ones (the judgment cache has them), and the run commits a final.
Everything is counted at the server (record_bodies). Each case takes 20-35 s on 2 busy cores: the
first pretrain pair runs by default, the rest are slow. The dead-judge cases (every call fails, the
endpoint down) are
tests/recipes/test_invalid_share.py; the rewrite/thoughts/evaluation/audit jobs are
tests/flows/test_faults.py and tests/flows/test_faults_eval_audit.py.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import pytest

from fake_openai import FakeOpenAI
from recipe_fixtures import chunks, read_metrics, tiny_cfg  # noqa: F401  (chunks: fixture)
from test_invalid_share import judge_sets, prefers_longer

# Pairs of faults for the first two documents; the first pair runs by default, the rest are slow.
# A 401 is never asked twice within a run (a client error); the others are asked once more.
FAULT_PAIRS = [("500", "malformed"), ("401", "429"), ("slow", "500")]
SENT_PER_RUN = {"401": 1}
DOCUMENT = re.compile(r"<<<BEGIN DOCUMENT (?:OPENING|START)[^>]*>>>\n(.*?)\n<<<END DOCUMENT", re.S)


def document(messages) -> str:
    return DOCUMENT.search(messages[-1]["content"]).group(1)


class FailFirstDocuments:
    """Faults by content, not arrival: the calls about the i-th distinct document seen fail with
    kinds[i]; later documents are answered. The same request fails the same way when retried."""

    def __init__(self, kinds: tuple[str, ...]) -> None:
        self.kinds, self.kind = kinds, {}

    def __call__(self, n: int, messages) -> str | None:
        doc = document(messages)
        if doc not in self.kind:
            self.kind[doc] = self.kinds[len(self.kind)] if len(self.kind) < len(self.kinds) else None
        return self.kind[doc]


def fault_params():
    return [pytest.param(pair, marks=() if i == 0 else pytest.mark.slow, id="+".join(pair))
            for i, pair in enumerate(FAULT_PAIRS)]


def body_id(body: dict) -> str:
    return json.dumps(body, sort_keys=True)


def run_with_faults_then_recover(srv: FakeOpenAI, train, root, answer_later, kinds) -> tuple[dict, object, list]:
    """Run 1 under FailFirstDocuments; then the endpoint recovers (answering with answer_later) and
    the same call is made again. (first run's facts, the rerun's final, the rerun's request bodies)."""
    from sip_core.training.recipe import TrainingStopped

    faults = FailFirstDocuments(kinds)
    srv.faults = faults
    with pytest.raises(TrainingStopped) as stopped:
        train()
    deadline = time.monotonic() + 10
    while srv.stats()["in_flight"] and time.monotonic() < deadline:  # a slow answer the client gave up on
        time.sleep(0.1)
    first = {"message": str(stopped.value), "counts": Counter(srv.stats()["counts"]), "kind": dict(faults.kind),
             "sent": Counter(body_id(b) for b in srv.bodies)}
    by_kind = {b_id: faults.kind[document(json.loads(b_id)["messages"])] for b_id in first["sent"]}
    first["failed"] = {b for b, kind in by_kind.items() if kind}
    first["answered"] = {b for b, kind in by_kind.items() if not kind}
    first["kept"] = sorted(str(p) for p in [*root.rglob("final"), *root.rglob("step-*")])
    srv.faults, srv.responder = None, answer_later  # the endpoint recovers: same URL, same model
    srv.reset()
    final = train()
    return first, final, [body_id(b) for b in srv.bodies]


def check_first_run(first: dict, invalid: str) -> None:
    assert len(first["kind"]) == 3, first["kind"]  # three documents judged, two of them failed
    message = first["message"]
    assert "\n" not in message and "stopped at step 1/2" in message, message
    assert f"({invalid} 2 of 3;" in message, message  # the counts are reported
    assert "no update was made, nothing kept" in message, message
    assert first["kept"] == []  # no final/, no checkpoint: nothing was built from failed calls
    failed, answered, sent = first["failed"], first["answered"], first["sent"]
    assert failed and answered
    kind_of = {b: first["kind"][document(json.loads(b)["messages"])] for b in failed}
    # asked, then asked again once (run_parsed's error retry); a client error is not asked again
    assert all(sent[b] == SENT_PER_RUN.get(kind, 2) for b, kind in kind_of.items()), (sent, kind_of)
    assert all(sent[b] == 1 for b in answered)
    expected = Counter()
    for b, kind in kind_of.items():
        expected[kind] += SENT_PER_RUN.get(kind, 2)
    assert first["counts"] == Counter({**expected, "ok": len(answered)})


def check_rerun(first: dict, metrics: list[dict], rerun: list[str]) -> None:
    assert [m["step"] for m in metrics] == [1, 2]  # trained from step 1 again: nothing was resumed
    step_1 = rerun[:metrics[0]["judge_calls"]]
    failed, answered, resent = first["failed"], first["answered"], set(step_1) & first["failed"]
    assert sorted(step_1) == sorted(failed), (  # exactly the failed requests, each once
        f"rerun step 1 sent {len(step_1)} requests, {len(resent)} of the {len(failed)} that had failed")
    assert not set(rerun) & answered, (  # the answered ones came from the judgment cache
        f"the rerun sent {len(set(rerun) & answered)} of the {len(answered)} requests answered before")
    assert not set(rerun[len(step_1):]) & set(first["sent"])  # step 2's requests are new
    assert len(rerun) == sum(m["judge_calls"] for m in metrics)


@pytest.mark.parametrize("kinds", fault_params())
def test_pretrain_failed_sets_are_asked_again_and_only_they(chunks, tmp_path, kinds):
    from sip_core.recipes import pretrain

    root = tmp_path / "run"
    with FakeOpenAI(record_bodies=True, responder=lambda m: "Compared.\nConclusion: Option 1", slow_s=3,
                    retry_after=0.01) as srv:
        cfg = tiny_cfg(root, *judge_sets(srv.base_url, "pretrain.batch_size=3", "pretrain.checkpoint_every=1",
                                         "judge.timeout_s=1"))
        first, final, rerun = run_with_faults_then_recover(srv, lambda: pretrain.train(cfg, chunks), root,
                                                           prefers_longer, kinds)
    check_first_run(first, "skipped_invalid")
    assert len(first["failed"]) == 4 and len(first["answered"]) == 2  # 2 calls a set (both orders)
    metrics = read_metrics(final)
    check_rerun(first, metrics, rerun)
    assert metrics[0]["judge_calls"] == 4 and metrics[0]["judge_cache_hits"] == 2
    assert all(m["skipped_invalid"] == 0 and m["invalid_judgments"] == 0 for m in metrics)
    assert any(m["updated"] for m in metrics) and final.uri.startswith(str(root))


RLMT = ("judge.backend=openai", "judge.model=fake-judge", "judge.max_retries=0", "judge.parse_retries=0",
        "rlmt.steps=2", "rlmt.batch_size=3", "rlmt.group_size=2", "rlmt.thought_tokens=8", "rlmt.predict_tokens=8",
        "rlmt.rollout_batch=6", "rlmt.checkpoint_every=1")
PREDICTION = re.compile(r"<<<BEGIN PREDICTED CONTINUATION[^>]*>>>\n(.*?)\n<<<END PREDICTED", re.S)


def scores_by_length(messages) -> str:
    """A recovered judge with some taste: predictions of even length score 1."""
    found = PREDICTION.search(messages[-1]["content"])
    return '{"score": %d}' % (len(found.group(1)) % 2 == 0 if found else 0)


@pytest.mark.slow
@pytest.mark.parametrize("kinds", FAULT_PAIRS, ids="+".join)
def test_rlmt_failed_groups_are_asked_again_and_only_they(chunks, tmp_path, kinds):
    from sip_core.recipes import rlmt

    root = tmp_path / "run"
    with FakeOpenAI(record_bodies=True, responder=lambda m: '{"score": 0}', slow_s=3, retry_after=0.01) as srv:
        cfg = tiny_cfg(root, f"judge.base_url={srv.base_url}", "judge.timeout_s=1", *RLMT)
        first, final, rerun = run_with_faults_then_recover(srv, lambda: rlmt.train(cfg, chunks), root,
                                                           scores_by_length, kinds)
    check_first_run(first, "skipped_invalid_groups")
    metrics = read_metrics(final)
    check_rerun(first, metrics, rerun)
    assert metrics[0]["judge_calls"] == len(first["failed"])
    assert all(m["skipped_invalid_groups"] == 0 and m["invalid_judgments"] == 0 for m in metrics)
    assert final.uri.startswith(str(root))
