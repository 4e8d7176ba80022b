"""`SipConfig`, the whole config as one validated tree, and dotted `key=value` overrides."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import Field, model_validator

from sip_core.config.judge_training import JudgeTrainConfig
from sip_core.config.rewriter_training import RewriterTrainConfig
from sip_core.config.sections import DataConfig, FilterConfig, JudgeConfig, LLMConfig, ModelConfig, RunConfig, Section
from sip_core.config.training import POOLS, EvalConfig, LifecycleConfig, PretrainConfig, RLMTConfig, SFTConfig


class SipConfig(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="the training judge: scores the "
                               "candidate sets, rewards RLMT, filters (stage 2)")
    eval_judge: JudgeConfig = Field(default_factory=JudgeConfig, description="the evaluation judge: win rate, "
                                    "coherence, judged safety and factuality, reward gate, thought-use probe. "
                                    "When it is the training judge the report calls the comparison circular")
    rewriter: LLMConfig = Field(default_factory=lambda: LLMConfig(backend="local"))
    teacher: LLMConfig = Field(default_factory=lambda: LLMConfig(backend="local"))
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    judge_train: JudgeTrainConfig = Field(default_factory=JudgeTrainConfig)
    rewriter_train: RewriterTrainConfig = Field(default_factory=RewriterTrainConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rlmt: RLMTConfig = Field(default_factory=RLMTConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)

    @model_validator(mode="after")
    def _pivot_in_pool(self) -> SipConfig:
        """Pivot mode compares every candidate with the original suffix (METHOD §4.3): the pool must hold it."""
        pc = self.pretrain
        if pc.uses_judge and self.judge.quality_mode == "pivot" and "original" not in POOLS[pc.pool]:
            raise ValueError(f"judge.quality_mode=pivot compares each candidate with the original suffix, "
                             f"but pretrain.pool={pc.pool} has none")
        return self

    @model_validator(mode="after")
    def _proxy_lm_not_trained(self) -> SipConfig:
        """A proxy judge scoring with the policy's likelihood rewards what the reference already finds
        likely (and grades the arms by it): its scoring LM must be none or another model."""
        from sip_core.judge.independence import policy_conflicts

        for role in ("judge", "eval_judge"):
            role_cfg = getattr(self, role)
            if role_cfg.backend == "proxy" and (conflicts := policy_conflicts(role, role_cfg, self)):
                raise ValueError(f"{conflicts[0]}: set {role}.model=none (lexical proxy) or another model")
        return self

    def replace(self, values: dict[str, Any]) -> SipConfig:
        """A validated copy with dotted keys changed, as `--set` would: {"sft.init": uri}."""
        tree = self.model_dump()
        for key, value in values.items():
            set_dotted(tree, key, value)
        return SipConfig.model_validate(tree)


class ConfigError(ValueError):
    """A config file or override is wrong; the message is one line naming the culprit."""


def set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """`data.max_docs=100` -> ("data.max_docs", 100); values are parsed as YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None
