"""What a run report is built from: `RunResults` (arms, their stages and evaluations, pairwise
comparisons, the judge audit, notes) and what rendering gives back: `ReportFiles`."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from sip_core.evaluation.factuality import JudgedFactualityResult, TruthfulQAResult
from sip_core.evaluation.nll import NLLResult, ThoughtNLLResult
from sip_core.evaluation.reasoning import ReasoningResult
from sip_core.evaluation.rlmt import ProbeResult, RewardGateResult
from sip_core.evaluation.safety import RefusalResult, SafetyResult
from sip_core.evaluation.stats import EvalResult, audit_dict
from sip_core.evaluation.winrate import CoherenceResult, RepetitionStats, WinRateResult

# Every result model the evaluation library returns. A dict (read back from results.json) becomes
# the one whose fields it has: the models forbid extra keys, so only the right one validates
# (ties between models whose fields are all optional fall to the first listed).
AnyResult = Union[WinRateResult, CoherenceResult, SafetyResult, RefusalResult, TruthfulQAResult,
                  JudgedFactualityResult, ReasoningResult, RewardGateResult, ProbeResult, NLLResult,
                  ThoughtNLLResult, RepetitionStats, EvalResult]


def _finite(value: Any) -> Any:
    """NaN / inf (the training log writes NaN for "no pairs this step") as None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class Stage(BaseModel):
    """One training stage of an arm: the recipe, the checkpoint it produced, its per-step metrics
    rows (as the training session logs them) and the checkpoint's ancestry
    (`LineageDB.ancestry(checkpoint)`: rows with uri, kind, depth and optionally manifest)."""

    model_config = ConfigDict(extra="forbid")

    recipe: str
    checkpoint: str | None = None
    metrics: list[dict[str, Any]] = Field(default_factory=list)
    lineage: list[dict[str, Any]] = Field(default_factory=list)
    summary: dict[str, Any] = Field(default_factory=dict, description="the recipe's final summary, if any")

    @field_validator("metrics", "lineage", mode="before")
    @classmethod
    def _clean(cls, rows: Any) -> Any:
        return _finite(list(rows)) if rows is not None else []


class Arm(BaseModel):
    """One model compared: e.g. "base→SIP→SFT→RLMT", its stages in order and its evaluations
    keyed by name (heldout_nll, thought_nll, safety_rtp, xstest, truthfulqa, judged_factuality,
    gsm8k, math500, reward_gate, probe, coherence, ...). A missing key renders as "not run"."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    stages: list[Stage] = Field(default_factory=list)
    evaluations: dict[str, SerializeAsAny[AnyResult] | None] = Field(default_factory=dict)

    @property
    def checkpoint(self) -> str | None:
        """The arm's final model: the last stage that names a checkpoint."""
        return next((s.checkpoint for s in reversed(self.stages) if s.checkpoint), None)


class Comparison(BaseModel):
    """A pairwise judgment between two arms (A against B) on the same prefixes."""

    model_config = ConfigDict(extra="forbid")

    a: str
    b: str
    label: str = Field("", description="what was compared, e.g. 'held-out prefixes, greedy 128 tokens'")
    kind: str = Field("", description="winrate, coherence or winrate_unsafe (empty in older reports: read "
                      "from the result's type)")
    result: SerializeAsAny[Union[WinRateResult, CoherenceResult]]

    @property
    def key(self) -> str:
        """The headline metric this comparison is a row of."""
        return self.kind or ("winrate" if isinstance(self.result, WinRateResult) else "coherence")


class RunResults(BaseModel):
    """Everything a run report shows. `judge_audit` is the judge-audit report (AuditReport,
    or its dict: judge, passed, reasons, position_bias, parse_failure_rate, dimensions).
    `judges` is `sip_core.judge.independence.judge_roles(cfg)` (training and evaluation judge,
    circular, reasons) plus "agreement" (the two judges on the same held-out pairs: n, agree,
    rate, low, high); an arm's "judge_agreement" evaluation is moved there on validation."""

    model_config = ConfigDict(extra="forbid")

    run_name: str
    config: dict[str, Any] = Field(default_factory=dict, description="a summary of the run's config")
    arms: list[Arm] = Field(default_factory=list)
    comparisons: list[Comparison] = Field(default_factory=list)
    judge_audit: dict[str, Any] | None = None
    judges: dict[str, Any] | None = None
    notes: list[str] = Field(default_factory=list)
    created_at: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _agreement(cls, data: Any) -> Any:
        """The judges' agreement is a property of the run, not a result of one arm."""
        if not isinstance(data, dict) or not isinstance(data.get("arms"), list):
            return data
        arms, agreement = [], None
        for arm in data["arms"]:
            evals = arm.get("evaluations") if isinstance(arm, dict) else None
            if isinstance(evals, dict) and "judge_agreement" in evals:
                evals = dict(evals)
                agreement = agreement or evals.pop("judge_agreement")
                arm = {**arm, "evaluations": evals}
            arms.append(arm)
        if agreement is None:
            return data
        judges = dict(data.get("judges") or {})
        judges.setdefault("agreement", agreement)
        return {**data, "arms": arms, "judges": judges}

    @field_validator("judge_audit", mode="before")
    @classmethod
    def _audit(cls, value: Any) -> Any:
        return audit_dict(value)

    def arm(self, name: str) -> Arm | None:
        return next((a for a in self.arms if a.name == name), None)


@dataclasses.dataclass
class ReportFiles:
    """A rendered report: markdown (images referenced by file name), a self-contained HTML page
    (images inlined as base64), and the PNGs by file name."""

    markdown: str
    html: str
    images: dict[str, bytes] = dataclasses.field(default_factory=dict)
