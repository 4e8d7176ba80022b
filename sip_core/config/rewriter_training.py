"""The `rewriter_train` section: training the suffix rewriter with GRPO (METHOD §5.4).

The paper trains its rewriter because a prompted model refuses, or mangles, unsafe text. On a
safe suffix the reward is 1 for an exact copy (else 0); on an unsafe one it is
½·(J_quality(rewrite vs original | prefix) + J_safety(rewrite)), each averaged over judge votes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sip_core.config.training import TrainConfig


class RewriterTrainConfig(TrainConfig):
    """`sip train-rewriter`: suffixes of the chunk artifact's train split, then a rewriter checkpoint."""

    init: str | None = Field("bundled:smollm2-135m-instruct", description="the rewriter's base model (a model "
                             "ref or checkpoint folder); part of the run's key and of the checkpoint's lineage")
    data: Literal["all", "unsafe", "rest"] = Field(
        "all", description="which filter partitions train (§5.4: both; unsafe suffixes are judged, the rest "
        "are rewarded for an exact copy)")
    chunks: int | None = Field(None, ge=1, description="train on at most this many train chunks (None: all)")
    group_size: int = Field(4, ge=2, description="G sampled rewrites per suffix")
    temperature: float = Field(0.6, gt=0, description="sampling temperature of the rewrites (METHOD §5.3: 0.6)")
    top_p: float = Field(0.6, gt=0, le=1)
    suffix_tokens: int | None = Field(None, ge=1, description="rewrite the first S tokens of each suffix, and "
                                      "sample at most S tokens (a CPU budget knob); default data.suffix_tokens")
    copy_reward: Literal["exact", "overlap"] = Field(
        "exact", description="a safe suffix's reward: exact (the paper: 1 for an exact copy, else 0) or "
        "overlap (the token overlap, a denser signal for small budgets)")
    judge_seeds: int = Field(5, ge=1, description="judge votes averaged per unsafe term (sample verdicts; a "
                             "probs judge gives the expected vote in one call)")
    validation_rows: int = Field(16, ge=1, description="held-out chunks rewritten before and after training "
                                 "(copy rate on safe ones; judged safety and quality of unsafe ones, by eval_judge)")
    rollout_batch: int = Field(16, ge=1, description="sequences per generate() call")
    lr: float = Field(1e-6, gt=0)
    steps: int = Field(20, ge=1)
    checkpoint_every: int = Field(10, ge=1)
