"""`sip report compare`: two saved runs (planted results, saved as the lifecycle saves its report)
side by side, through the real CLI: a run root finds its newest committed report, a report folder
and a results.json name one directly; decided differences between runs are marked, judged ones
only when both runs graded with the same non-circular judge; bad input is one line and exit 2."""

from __future__ import annotations

import pytest

from flows.cli import main
from sip_core.report import save_report
from test_first_screen import _safety, planted


def _run(tmp_path, name: str, results) -> str:
    root = tmp_path / name
    save_report(results.model_copy(update={"run_name": name}), str(root / "reports" / f"{name}-0001"))
    return str(root)


def _arm_rows(md: str, arm: str) -> dict[str, str]:
    block = md.split(f"## {arm}\n")[1].split("\n## ")[0]
    return {line.split(" | ")[0].strip("| "): line for line in block.splitlines() if line.startswith("| ")}


@pytest.fixture
def two_runs(tmp_path):
    last_week = planted(circular=False)
    tonight = planted(circular=False)
    tonight.arm("sip").evaluations["safety_rtp"] = _safety(45)  # safe rate 90% -> 55%: a decided change
    return _run(tmp_path, "last-week", last_week), _run(tmp_path, "tonight", tonight)


def test_compare_puts_two_runs_side_by_side(two_runs, tmp_path, capsys):
    last_week, tonight = two_runs
    assert main(["report", "compare", last_week, f"{tonight}/reports/tonight-0001"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Runs compared: last-week · tonight")
    assert f"**A** ({last_week}): Run **last-week**" in md and "grading independent" in md
    sip = _arm_rows(md, "sip")
    assert sip["metric"] == "| metric | A · last-week | B · tonight |"
    assert sip["safety rate (RTP)"] == ("| safety rate (RTP) | 90.0% [82.6, 94.5] n=100 **> B** | "
                                        "55.0% [45.2, 64.4] n=100 |")
    assert sip["TruthfulQA MC2"] == "| TruthfulQA MC2 | 95.0% [83.5, 98.6] n=40 | 95.0% [83.5, 98.6] n=40 |"
    assert _arm_rows(md, "base")["win rate vs base"] == "| win rate vs base | (the base model) | (the base model) |"
    assert _arm_rows(md, "ntp")["win rate vs base"] == ("| win rate vs base | 53.1% [44.5, 61.6] n=128 | "
                                                        "53.1% [44.5, 61.6] n=128 |")
    # a results.json names a run too; --out .html writes a page
    out = tmp_path / "compare.html"
    assert main(["report", "compare", last_week, f"{tonight}/reports/tonight-0001/results.json", "--out",
                 str(out)]) == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<b>&gt; B</b>" in page


def test_judged_differences_are_not_marked_when_either_run_is_circular(tmp_path, capsys):
    a = planted(circular=False)
    b = planted(circular=True)
    b.arm("sip").evaluations["safety_rtp"] = _safety(45)
    b.arm("sip").evaluations["truthfulqa"] = a.arm("base").evaluations["truthfulqa"]  # MC2 95% -> 50%
    assert main(["report", "compare", _run(tmp_path, "a", a), _run(tmp_path, "b", b)]) == 0
    md = capsys.readouterr().out
    sip = _arm_rows(md, "sip")
    assert "**>" not in sip["safety rate (RTP)"]  # judged, and b graded with its own training judge
    assert sip["TruthfulQA MC2"].endswith("n=40 **> B** | 50.0% [35.2, 64.8] n=40 |")  # no judge involved
    assert "grading circular: judged metrics are never marked" in md


def test_bad_runs_are_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text('{"not": "a report"}')
    good = _run(tmp_path, "good", planted(circular=False))
    for argv in ([str(tmp_path / "empty"), good], [str(tmp_path / "bad.json"), good], [good]):
        assert main(["report", "compare", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("sip: error: report compare:") and "\n" not in err, err
