"""The parameters of each deployment and CLI job: a config file plus overrides, and job knobs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sip_core.config.loading import load_config
from sip_core.config.tree import SipConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class JobParams(BaseModel):
    """What a deployment's form asks for: a config file plus overrides (the same as the CLI)."""

    model_config = ConfigDict(extra="forbid")
    config_file: str | None = Field("configs/tiny.yaml", description="YAML config, relative to the project root")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides, e.g. data.max_docs=100")

    def load(self) -> SipConfig:
        path = self.config_file
        if path and not Path(path).is_absolute() and not Path(path).exists():
            path = str(PROJECT_ROOT / path)  # deployments run from elsewhere
        return load_config(path, self.overrides)


class RewriteParams(JobParams):
    limit: int = Field(64, ge=1, description="chunks to rewrite in this run (those not yet rewritten)")
    split: Literal["train", "heldout"] = "train"


class ThoughtParams(JobParams):
    limit: int | None = Field(64, ge=1)
    match: Literal["exact", "normalized"] = "exact"


class AuditParams(JobParams):
    pass


class PretrainParams(JobParams):
    objective: Literal["dpo", "rf_nll", "ntp"] | None = Field(None, description="override pretrain.objective")


class MidtrainParams(JobParams):
    stage: Literal["sft", "rlmt", "both"] = Field("both", description="thinking SFT, RLMT, or SFT then RLMT")
    init: str | None = Field(None, description="starting checkpoint (e.g. a pretrain run's final/); "
                             "default model.policy")


class EvaluateParams(JobParams):
    model: str = Field("bundled:smollm2-135m-instruct", description="model to evaluate: a checkpoint URI or model ref")
    against: str | None = Field(None, description="second model for the pairwise win rate")


class LifecycleParams(JobParams):
    preset: Literal["smoke", "tiny", "tiny-trained-judge", "safety-tiny"] | None = Field(
        "tiny", description="configs/lifecycle-<preset>.yaml; None: config_file")

    def load(self) -> SipConfig:
        if self.preset:
            return JobParams(config_file=lifecycle_preset(self.preset), overrides=self.overrides).load()
        return super().load()


def lifecycle_preset(name: str) -> str:
    """The config file of a lifecycle preset: the recipe config of that name, cut to the preset's
    time budget (smoke <= 5 min, tiny <= 30 min on a 2-core CPU; tiny-trained-judge is tiny with the
    judge trained first, ~1 h there; safety-tiny is the safety setting on the bundled samples)."""
    return f"configs/lifecycle-{name}.yaml"
