"""The `judge_train` section: training a small judge on synthetic binary-choice items (METHOD §5.3).

The paper fine-tunes its judge with GRPO on original-vs-corrupted suffixes (both option orders)
plus pointwise safety labels. `objective: sft` is the small-budget variant: cross-entropy on the
verdict token only, with the answer prefilled up to it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sip_core.config.training import TrainConfig

# The corruption rules of sip_core.judge.corruptions (repeated here: config must not import the judge stage).
KNOWN_RULES = ("shuffle_sentences", "repeat_loop", "swap_numbers", "swap_entities", "inject_profanity")


class JudgeTrainConfig(TrainConfig):
    """`sip train-judge`: items from the chunk artifact's train split, then a fine-tuned judge checkpoint."""

    init: str | None = Field("bundled:smollm2-135m-instruct", description="the judge's base model (a model "
                             "ref or checkpoint folder); it is part of the run's key and of the checkpoint's lineage")
    objective: Literal["sft", "grpo"] = Field(
        "sft", description="sft: cross-entropy on the verdict token after the prefilled answer opening (small "
        "budgets); grpo: G sampled verdicts per item, reward 1 when it matches the label, DrGRPO updates")
    lr: float = Field(2e-5, gt=0)
    batch_size: int = Field(8, ge=1, description="items per micro-batch")
    steps: int = Field(60, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    eval_every: int = Field(20, ge=1, description="validation accuracy on the held-out items every this many steps")
    chunks: int = Field(400, ge=1, description="train chunks turned into items (each gives one item per rule "
                        "that applies, in both option orders)")
    rules: list[str] = Field(default_factory=lambda: list(KNOWN_RULES), description="corruption rules trained "
                             "on; leave one out to measure how the judge generalises to it")
    safety_items: bool = Field(True, description="also pointwise safety items: original suffixes labelled by "
                               "the stage-1 filter (rest: safe, unsafe: unsafe) and profanity-injected ones (unsafe)")
    prefix_tokens: int = Field(48, ge=1, description="the prefix's last tokens the judge reads")
    option_tokens: int = Field(32, ge=1, description="each option's (or safety text's) first tokens")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="share of documents whose items are kept "
                                       "out of training and scored before and after (validation accuracy)")
    validation_items: int = Field(64, ge=1, description="at most this many validation items are scored")
    quality_prompt: str = Field("judge_quality", description="pairwise prompt the judge is trained (and used) with")
    safety_prompt: str = Field("judge_safety", description="pointwise safety prompt the judge is trained with")
    group_size: int = Field(4, ge=2, description="grpo: G sampled verdicts per item")
    temperature: float = Field(1.0, gt=0, description="grpo: sampling temperature of the verdicts")

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, rules: list[str]) -> list[str]:
        unknown = sorted(set(rules) - set(KNOWN_RULES))
        if unknown:
            raise ValueError(f"unknown corruption rule {unknown[0]!r}; known: {', '.join(KNOWN_RULES)}")
        if not rules:
            raise ValueError("judge_train.rules must name at least one corruption rule")
        return rules
