"""RLMT's prompts come from the teacher's thought positions in the RL half of the thought data
(positions only), and an RL half with nothing to train on is a one-line error, never a fallback."""

from __future__ import annotations

import subprocess
import sys

from fake_openai import FakeOpenAI
from recipe_fixtures import ROOT, chunks, cli_args, env_vars, tiny_cfg  # noqa: F401  (chunks: fixture)
from sip_core.llm.thought_markup import strip_thoughts, thought_spans

TEXT = ("The museum opened in 1902 after a long campaign by local teachers. <think>Next I should say who paid."
        "</think>A wealthy merchant gave most of the money and asked for nothing in return. <think>Then the "
        "building itself.</think>The building was designed by a young architect from Leeds, who later became "
        "famous for railway stations across the north of England.")


def test_prompts_start_before_a_teacher_thought_and_keep_earlier_ones(tokenizer):
    from sip_core.training.data import Rows, thought_prompts

    first = len(tokenizer(TEXT[:TEXT.index("<think>")].rstrip(), add_special_tokens=False)["input_ids"])
    rows = thought_prompts(Rows({"chunk_id": ["c1", "c2"], "augmented_text": [TEXT, "No thoughts in this one."]}),
                           tokenizer, min_before=first + 1, n_after=8)
    assert rows.columns["chunk_id"] == ["c1"]  # the text without a thought gives no prompt
    [row] = rows.take([0])
    second = [s for s, _ in thought_spans(TEXT)][1]
    # the policy's prefix: the augmented text up to the second teacher thought, the first one kept
    assert tokenizer.decode(row["prefix_ids"]) == TEXT[:second].rstrip()
    assert "<think>Next I should say who paid.</think>" in tokenizer.decode(row["prefix_ids"])
    # the judge's prefix and the reference are raw text; the teacher's thought at the position is never used
    assert row["prefix_text"] == strip_thoughts(TEXT[:second]).rstrip() and "<think>" not in row["prefix_text"]
    assert len(row["suffix_ids"]) == 8 and row["suffix_text"].startswith("The building was designed")
    assert "building itself" not in row["suffix_text"] + tokenizer.decode(row["prefix_ids"])


def test_rlmt_rows_come_from_teacher_positions_in_the_rl_half(chunks, tmp_path):
    from sip_core.augment.thought_insertion import insert_thoughts
    from sip_core.infra.run_context import RunContext
    from sip_core.infra.models import load_tokenizer
    from sip_core.llm.factory import open_llm
    from sip_core.recipes.rlmt import Rlmt
    from sip_core.training import data

    cfg = tiny_cfg(tmp_path / "run", "teacher.backend=proxy", "data.min_prefix_tokens=40", "rlmt.predict_tokens=8")
    thoughts = insert_thoughts(RunContext(cfg), chunks, open_llm(cfg, "teacher"), limit=24)
    recipe = Rlmt(cfg, chunks, thoughts)
    recipe.tok = tok = load_tokenizer(cfg.model.policy)
    rows = recipe._rl_rows()
    so = cfg.run.storage_options
    rl = data.gated_thoughts(thoughts, "rl", so)
    by_chunk = dict(zip(rl.columns["chunk_id"], rl.columns["augmented_text"]))
    assert 0 < len(rows) <= len(rl) == recipe.rl_half_rows
    assert set(rows.columns["chunk_id"]) <= set(by_chunk)  # only the RL half, never the SFT half
    earlier_kept = 0
    for row in rows.take(range(len(rows))):
        text = by_chunk[row["chunk_id"]]
        prefix = tok.decode(row["prefix_ids"])
        starts = [s for s, _ in thought_spans(text) if text[:s].rstrip() == prefix]
        assert starts, "the prompt ends right before a teacher thought"
        assert len(row["prefix_ids"]) >= 40 and len(row["suffix_ids"]) == 8
        raw_after = strip_thoughts(text[starts[0]:])
        assert raw_after.startswith(row["suffix_text"].strip()[:20])
        earlier_kept += "<think>" in prefix
    assert earlier_kept > 0  # some prompts sit after a first thought, which stays in the prefix


def test_an_empty_rl_half_is_a_one_line_error_with_exit_2(chunks, tmp_path):
    from sip_core.augment.thought_insertion import insert_thoughts
    from sip_core.infra.run_context import RunContext
    from sip_core.llm.factory import open_llm

    root = tmp_path / "run"
    cfg = tiny_cfg(root, "teacher.backend=openai", "teacher.model=fake", "judge.parse_retries=0")
    with FakeOpenAI(latency=0.0, responder=lambda messages: "no tags at all") as srv:
        cfg.teacher.base_url = srv.base_url
        thoughts = insert_thoughts(RunContext(cfg), chunks, open_llm(cfg, "teacher"), limit=6)
    assert thoughts.stats["kept"] == 0 and thoughts.stats["rows"] == 6
    proc = subprocess.run([sys.executable, "-m", "sip_core.recipes.rlmt",
                           *cli_args(root, chunks.uri, "rlmt.steps=1"), "--thoughts", thoughts.uri],
                          capture_output=True, text=True, env=env_vars(), cwd=ROOT, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert thoughts.uri in errors[0] and "0 gated RL-half rows" in errors[0]
