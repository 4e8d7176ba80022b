"""A `sip train-judge` checkpoint served by the real vLLM CPU server and used through the openai
backend with `verdict: probs`: the card (prompt versions, verdict mode, cuts) is read from the
folder the server was started with, each verdict is one request read from its logprobs, and the
option probabilities match the same checkpoint on the local backend."""

from __future__ import annotations

import pytest

from test_vllm import served_requests, serve_checkpoint, smoke_cfg, smoke_chunks

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def trained_judge(tmp_path_factory):
    """SmolLM2 after two SFT steps as a judge: enough to carry a card; the numbers compared are the
    same checkpoint's on two backends, not its accuracy."""
    from sip_core.recipes import train_judge

    root = tmp_path_factory.mktemp("judge-run")
    cfg = smoke_cfg(root, "judge_train.chunks=3", "judge_train.steps=2", "judge_train.batch_size=8",
               "judge_train.validation_fraction=0", "judge_train.checkpoint_every=100", "judge_train.device=cpu",
               "judge_train.prefix_tokens=24", "judge_train.option_tokens=16", "judge_train.keep_after_finish=0")
    chunks = smoke_chunks(cfg)
    return train_judge.train(cfg, chunks), chunks


@pytest.fixture(scope="module")
def judge_url(tmp_path_factory, trained_judge):
    final, _ = trained_judge
    yield from serve_checkpoint(tmp_path_factory.mktemp("vllm-judge") / "server.log", final.uri)


def test_a_served_trained_judge_gives_probs_verdicts_that_match_the_local_backend(trained_judge, judge_url, tmp_path):
    from sip_core.infra import store
    from sip_core.judge.spec import check_verdicts, judge_spec, verdict_share
    from sip_core.llm.factory import open_llm

    final, chunks = trained_judge
    rows = store.read_parquet(chunks.files[0], columns=["prefix_text", "suffix_text"]).to_pylist()[:4]
    served = smoke_cfg(tmp_path / "served", "judge.backend=openai", f"judge.model={final.uri}",
                  f"judge.base_url={judge_url}/v1", "judge.timeout_s=600")
    local = smoke_cfg(tmp_path / "local", "judge.backend=local", f"judge.model={final.uri}")
    spec = judge_spec(served.judge)
    assert spec.verdict == "probs" and spec.prompts["quality"] == "judge_quality@1"  # from the folder's card
    check_verdicts(open_llm(served, "judge").backend, served.judge)  # the preflight training runs: passes
    requests = [spec.render("quality", None, prefix=a["prefix_text"], option_1=a["suffix_text"],
                            option_2=b["suffix_text"]) for a, b in zip(rows, rows[1:] + rows[:1])]
    requests += [spec.render("safety", None, text=r["suffix_text"]) for r in rows[:2]]
    before = served_requests(judge_url)
    over_http = open_llm(served, "judge").run_parsed(requests, 0)
    assert served_requests(judge_url) - before == len(requests)  # one request per verdict, nothing sampled
    in_process = open_llm(local, "judge").run_parsed(requests, 0)
    for req, a, b in zip(requests, over_http, in_process):
        assert a.ok and b.ok, (a.error, b.error)
        task, value = ("safety", True) if req.prompt.startswith("judge_safety") else ("quality", 1)
        pa, pb = verdict_share(a, task, value), verdict_share(b, task, value)
        assert 0 < pa < 1 and abs(pa - pb) < 0.1, (req.prompt, pa, pb)
