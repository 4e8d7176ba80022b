"""The lifecycle's Prefect artifact is the report's first screen (issue 18): `publish_report`, run in
a flow of the test's ephemeral Prefect on a planted report (no model), creates a Markdown artifact
with the headline table and the decided comparisons, without the rest of the report (appendix,
training, lineage), and a link to the whole HTML report."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))

from tiny_fixture import tiny_results  # noqa: E402


def _artifacts(flow_run_id, key: str) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def _section(md: str, heading: str) -> str:
    """The text under `heading` up to the next heading."""
    lines = md.split(heading + "\n", 1)[1].splitlines()
    return "\n".join(lines[:next((i for i, line in enumerate(lines) if line.startswith("#")), len(lines))])


def test_publish_report_artifact_is_the_first_screen(tmp_path):
    from prefect import flow

    from flows.lifecycle import publish_report
    from sip_core.config import load_config
    from sip_core.infra.run_context import RunContext
    from sip_core.report.assemble import save_run_report

    cfg = load_config(None, [f"run.root={tmp_path / 'run'}", "run.name=tiny", "judge.model=none"])
    report = save_run_report(RunContext(cfg), tiny_results(circular=False), [])
    whole = report.read_markdown()
    assert "## Appendix: every pairwise comparison" in whole and "Lineage of the models compared" in whole

    @flow(name="publish-report-test")
    def publish() -> None:
        publish_report(cfg, report)

    state = publish(return_state=True)
    assert state.is_completed()
    run_id = state.state_details.flow_run_id

    [artifact] = _artifacts(run_id, "lifecycle-report")
    shown = artifact.data
    assert artifact.type == "markdown" and report.uri in artifact.description
    # the headline table: its header row, one row per metric
    headline = _section(shown, "## Headline")
    assert "| metric | A · base | B · base→SFT→RLMT | C · base→SIP→SFT→RLMT | D · base→NTP | E · base→SIP |" \
        in headline
    assert "| judged factuality | 75.0% [44.9, 91.7] n=8 **> B** |" in headline
    # the decided comparisons, as the saved report states them
    decided = [line for line in _section(shown, "## Decided comparisons").splitlines() if line.startswith("- ")]
    assert len(decided) == 5
    assert "- judged factuality: base 75.0% [44.9, 91.7] (n = 8) is higher than base→SFT→RLMT 12.5% [3.5, 36.0] " \
           "(n = 8); the intervals do not overlap." in decided
    assert all(line in whole for line in decided)
    # and nothing past the first screen
    for rest in ("Appendix", "every pairwise comparison", "## Training", "Lineage of the models", "## Notes",
                 "## Judge audit details"):
        assert rest not in shown, rest
    assert len(shown) < len(whole) / 2

    [link] = _artifacts(run_id, "lifecycle-report-html")
    assert link.data == f"[report.html]({report.html})"  # Prefect stores a link artifact as Markdown
