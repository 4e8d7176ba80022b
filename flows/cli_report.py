"""`sip report compare RUN_A RUN_B ...`: several runs' headline tables side by side.

    sip report compare runs/nightly runs/last-week            # run roots: their newest report
    sip report compare runs/tiny/reports/tiny-ab12 other/results.json --out compare.html

Each RUN is a report folder, its results.json, or a run root. Markdown goes to stdout; --out
writes it to a file instead (HTML when the name ends in .html).
"""

from __future__ import annotations


def cmd_report_compare(args) -> int:
    from pathlib import Path

    from sip_core.config import ConfigError
    from sip_core.report.compare import compare_html, compare_markdown, load_run

    if len(args.runs) < 2:
        raise ConfigError("report compare: name at least two runs")
    runs = [load_run(ref) for ref in args.runs]
    if not args.out:
        print(compare_markdown(runs), end="")
        return 0
    out = Path(args.out)
    out.write_text(compare_html(runs) if out.suffix == ".html" else compare_markdown(runs))
    print(f"report compare: {len(runs)} runs -> {out}")
    return 0


def add_commands(sub) -> None:
    from flows.cli import _command, arg

    report = sub.add_parser("report", help="run reports").add_subparsers(dest="report_command", required=True)
    _command(report, "compare", "several runs' headline tables side by side", cmd_report_compare,
             arg("runs", nargs="+", metavar="RUN", help="a report folder, its results.json, or a run root"),
             arg("--out", help="write to this file (.html: a page; else Markdown) instead of stdout"))
