"""Run report: a pure library (no Prefect) that turns a run's results into Markdown,
a self-contained HTML page and PNG plots, and saves them as an artifact with lineage.

    files = render_report(RunResults(...))           # ReportFiles: markdown, html, images
    manifest = save_report(results, uri, storage_options, ctx)

`assemble` builds a run's `RunResults` from its stages and evaluations and saves it
content-addressed (`run_results`, `save_run_report`); `summaries` renders one job's short
Markdown (an evaluation table, a judge audit); `training` renders the Training section
(progress, cost, and the SIP candidate pool beside its rollout-chosen rate).

The first screen (`first_screen`; also the lifecycle's Prefect artifact, `first_screen_markdown`)
is the run's identity, the Judges box (training and evaluation judge, their audits and agreement,
whether grading is circular: then no judged verdict anywhere) and one headline table (arms as
columns, decided differences marked: `headline`); then the decided comparisons in words and the
undecided ones counted per metric family with a sample-size estimate (`power`); training with
means over all steps and the last window (`training`, `curves`); the per-evaluation tables; and
an appendix with every pairwise comparison (`appendix`). `compare` puts several runs' headline
tables side by side (`sip report compare`). Plots need matplotlib.
"""

from sip_core.report.models import AnyResult, Arm, Comparison, ReportFiles, RunResults, Stage
from sip_core.report.format import overlaps
from sip_core.report.first_screen import first_screen_markdown
from sip_core.report.render import render_report
from sip_core.report.save import save_report

__all__ = ["AnyResult", "Arm", "Comparison", "ReportFiles", "RunResults", "Stage", "first_screen_markdown",
           "overlaps", "render_report", "save_report"]
