"""The one run context: where a run's artifacts and state live, and how their keys are made.

Every stage asks it for its output URI (content-addressed: same inputs, config and code -> same
folder), for the DuckDB files (judgment cache, lineage), and for the `WriteContext` its writes
commit under. Prefect cache keys use the same keys, so the library and the task layer can never
disagree about what a stage's output depends on.

    <run.root>/prepare/<stage>-<key>   docs, filtered, chunks, thoughts, judge-audit pairs
    <run.root>/rewrites/<key>/batch-*  nightly rewrite batches
    <run.root>/train/<recipe>-<key>    checkpoints (code version deliberately not in the key)
    <run.root>/eval/<key>              one model's evaluations
    <run.root>/audits/audit-<key>      judge audits
    <run.root>/reports/<name>-<key>    run reports
    run.state unset: <state_dir>/judgments.duckdb, <state_dir>/lineage.duckdb (one machine)
    run.state a DuckLake catalog: both in it, data Parquet under <run.root>/_state/lake (a cluster)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sip_core.config import SipConfig
from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import Manifest, Provenance, WriteContext
from sip_core.infra.lineage import LineageDB
from sip_core.infra.paths import state_dir_for
from sip_core.infra.state import StatePlace, StateStore, open_state


def content_key(*parts: Any, code: bool = True) -> str:
    """16 hex digits over `parts` (JSON, sorted keys), plus the code version unless `code=False`."""
    payload = [*parts, artifacts.code_version()] if code else list(parts)
    return artifacts.json_digest(payload)[:16]


@dataclass
class RunContext:
    """What every stage needs from its caller: config, provenance, and where things go."""

    cfg: SipConfig
    provenance: Provenance = Provenance()

    @property
    def storage_options(self) -> dict[str, Any]:
        return self.cfg.run.storage_options

    @property
    def root(self) -> str:
        return store.normalize(self.cfg.run.root)

    # ------------------------------------------------------------------ local state
    @property
    def state_dir(self) -> Path:
        return state_dir_for(self.cfg.run.root, self.cfg.run.state_dir)

    def state(self) -> StatePlace:
        """Where the judgment cache and lineage live (run.state); nothing else needs to know which."""
        return open_state(self.cfg.run.state, self.state_dir, self.root, self.storage_options)

    @property
    def judgments_db(self) -> StateStore:
        """The judgment cache's store (a local DuckDB file's store has `.path`); JudgmentCache takes it."""
        return self.state().judgments

    @property
    def lineage_db(self) -> StateStore:
        return self.state().lineage

    def judgment_cache(self):
        from sip_core.llm.judgment_cache import JudgmentCache  # the LLM layer builds on infra, not back

        return JudgmentCache(self.state().judgments)

    def lineage(self) -> LineageDB:
        return LineageDB(self.state().lineage)

    def check_state(self) -> None:
        """Open both parts of the state (creating what is missing) so that an unreachable catalog, one
        from another duckdb version or a newer schema fails here, before any model call (StateError)."""
        self.judgment_cache()
        self.lineage()

    # ------------------------------------------------------------------ output URIs
    def stage_uri(self, stage: str, *key_parts: Any) -> str:
        """A prepared dataset: `prepare/<stage>-<key>`, key over its inputs, config and the code."""
        return store.join(self.root, "prepare", f"{stage}-{content_key(*key_parts)}")

    def rewrites_root(self) -> str:
        """Where every rewrite batch of this run lives (one folder per chunks + rewriter + prompt)."""
        return store.join(self.root, "rewrites")

    def rewrites_uri(self, chunks_hash: str, model_id: str, prompt_key: str) -> str:
        key = hashlib.sha256(f"{chunks_hash}|{model_id}|{prompt_key}".encode()).hexdigest()[:16]
        return store.join(self.rewrites_root(), key)

    def train_uri(self, recipe: str, payload: Any) -> str:
        """Code version deliberately not in the key (it is in every checkpoint's manifest): fixing
        a bug and rerunning resumes instead of starting over."""
        return store.join(self.root, "train", f"{recipe}-{content_key(payload, code=False)}")

    def eval_uri(self, payload: dict[str, Any]) -> str:
        return store.join(self.root, "eval", content_key(payload))

    def audit_uri(self, pairs_hash: str, config: dict[str, Any]) -> str:
        key = hashlib.sha256(f"{pairs_hash}|{config}".encode()).hexdigest()[:16]
        return store.join(self.root, "audits", f"audit-{key}")

    def report_uri(self, payload: Any) -> str:
        return store.join(self.root, "reports", f"{self.cfg.run.name}-{content_key(payload, code=False)}")

    # ------------------------------------------------------------------ writes
    def context(self, config: dict[str, Any], parents: list[Manifest]) -> WriteContext:
        return WriteContext(config=config, config_hash=artifacts.config_hash(config), parents=parents,
                            provenance=self.provenance, storage_options=self.storage_options, lineage=self.lineage())
