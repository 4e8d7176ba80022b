"""`sip state export|import`: copy judgments and lineage from one state store into another.

A laptop's local DuckDB files into a cluster's DuckLake store (so its paid calls carry over), or
back. Rows go through the same insert-if-absent writes as live ones, in batches: a key or artifact
the target already holds is kept, so a copy can be repeated or resumed after a crash.
Lookup counters (cache_lookups) are per-process statistics and stay where they were counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from sip_core.infra.lineage import ARTIFACTS, PARENTS, LineageDB
from sip_core.infra.state import StateError, StatePlace
from sip_core.llm.judgment_cache import JudgmentCache

BATCH_ROWS = 50_000


@dataclass
class Copied:
    judgments: int
    judgments_new: int
    artifacts: int
    artifacts_new: int

    def line(self, source: str, target: str) -> str:
        return (f"{self.judgments} judgments ({self.judgments_new} new), {self.artifacts} artifacts "
                f"({self.artifacts_new} new): {source} -> {target}")


def copy_state(source: StatePlace, target: StatePlace) -> Copied:
    if source.where == target.where:
        raise StateError(f"state copy: source and target are the same store ({source.where})")
    src_cache, dst_cache = JudgmentCache(source.judgments), JudgmentCache(target.judgments)
    src_lineage, dst_lineage = LineageDB(source.lineage), LineageDB(target.lineage)
    judgments = judgments_new = 0
    for table in src_cache.state.read_batches("SELECT * FROM judgments ORDER BY key", BATCH_ROWS):
        judgments += table.num_rows
        judgments_new += dst_cache.store_table(table)
    artifacts = artifacts_new = 0
    for table in src_lineage.state.read_batches("SELECT * FROM artifacts ORDER BY artifact_id", BATCH_ROWS):
        artifacts += table.num_rows
        artifacts_new += dst_lineage.record_tables(table, PARENTS.empty_table())
    # Edges after their artifacts: a crash in between leaves artifacts without edges, which a rerun adds.
    for table in src_lineage.state.read_batches("SELECT * FROM artifact_parents ORDER BY ALL", BATCH_ROWS):
        dst_lineage.record_tables(ARTIFACTS.empty_table(), table)
    return Copied(judgments, judgments_new, artifacts, artifacts_new)

