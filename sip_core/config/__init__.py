"""The one config system: pydantic sections, YAML files, `--set key=value` overrides.

    sections.py   run, data, filter, model and the LLM roles (judge, rewriter, teacher)
    training.py   the recipes (pretrain, sft, rlmt), evaluation and lifecycle sections
    tree.py       SipConfig (every section) and dotted overrides
    loading.py    YAML files with `extends:` -> a validated SipConfig
    params.py     what each deployment / CLI job takes: a config file, overrides, job knobs

Unknown keys are errors (extra="forbid"), so a typo in a YAML file or an override fails loudly
instead of silently running the default.
"""

from sip_core.config.loading import load_config, read_config_tree
from sip_core.config.params import (AuditParams, EvaluateParams, JobParams, LifecycleParams, MidtrainParams,
                                    PretrainParams, RewriteParams, ThoughtParams, lifecycle_preset)
from sip_core.config.sections import (DataConfig, FilterConfig, JudgeConfig, LLMConfig, ModelConfig, RunConfig,
                                      resolve_wordlists)
from sip_core.config.training import (PAIRINGS, POOLS, EvalConfig, LifecycleConfig, Pairing, PretrainConfig,
                                      RLMTConfig, SFTConfig, TrainConfig)
from sip_core.config.tree import ConfigError, SipConfig, parse_override

__all__ = ["PAIRINGS", "POOLS", "AuditParams", "ConfigError", "DataConfig", "EvalConfig", "EvaluateParams",
           "FilterConfig", "JobParams", "JudgeConfig", "LLMConfig", "LifecycleConfig", "LifecycleParams",
           "MidtrainParams", "ModelConfig", "Pairing", "PretrainConfig", "PretrainParams", "RLMTConfig",
           "RewriteParams", "RunConfig", "SFTConfig", "SipConfig", "ThoughtParams", "TrainConfig", "load_config",
           "lifecycle_preset", "parse_override", "read_config_tree", "resolve_wordlists"]
