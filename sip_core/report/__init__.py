"""Run report: a pure library (no Prefect) that turns a run's results into Markdown,
a self-contained HTML page and PNG plots, and saves them as an artifact with lineage.

    files = render_report(RunResults(...))           # ReportFiles: markdown, html, images
    manifest = save_report(results, uri, storage_options, ctx)

`assemble` builds a run's `RunResults` from its stages and evaluations and saves it
content-addressed (`run_results`, `save_run_report`); `summaries` renders one job's short
Markdown (an evaluation table, a judge audit); `training` renders the Training section
(progress, cost, and the SIP candidate pool beside its rollout-chosen rate).

The report puts the judge and its audit verdict first, says for every comparison and every
metric measured on several arms whether the 95% intervals overlap, shows n and seeds beside
every number (and, where the intervals are clustered, what n counts), and renders
evaluations that did not run as "not run". Plots need matplotlib.
"""

from sip_core.report.models import AnyResult, Arm, Comparison, ReportFiles, RunResults, Stage
from sip_core.report.format import comparison_sentence, difference_sentence, overlaps
from sip_core.report.render import render_report
from sip_core.report.save import save_report

__all__ = ["AnyResult", "Arm", "Comparison", "ReportFiles", "RunResults", "Stage", "comparison_sentence",
           "difference_sentence", "overlaps", "render_report", "save_report"]
