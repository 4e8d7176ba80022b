"""The config sections of the training recipes, the evaluations and the lifecycle."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sip_core.config.sections import Section


class TrainConfig(Section):
    """What every recipe shares: device, precision, optimizer, schedule, checkpoints."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast where native "
                                                      "(CUDA, AMX CPUs), fp32 on AVX2-only CPUs")
    seed: int = 0
    steps: int = Field(30, ge=1, description="optimizer steps")
    batch_size: int = Field(2, ge=1, description="prefixes (or rows) per micro-batch per process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_prefix_tokens: int | None = Field(None, ge=1, description="left-truncate prefixes to this many tokens "
                                          "at train time (cheap CPU runs); None = as materialized")
    checkpoint_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept; older ones are deleted")
    keep_after_finish: int | None = Field(None, ge=0, description="step checkpoints kept once final/ is committed "
                                          "(each holds the optimizer state: ~3x the model); None: keep_checkpoints")
    eval_every: int = Field(10, ge=1, description="held-out suffix NLL every this many steps")
    heldout_rows: int = Field(16, ge=1)
    init: str | None = Field(None, description="starting model (a checkpoint folder or model ref); "
                             "default model.policy")
    nproc_per_node: int = Field(1, ge=1, description="processes torchrun starts (one per GPU; >1 on CPU uses gloo)")


class PretrainConfig(TrainConfig):
    """Self-improving pretraining (method §5): Online DPO best-vs-worst, or its controls."""

    objective: Literal["dpo", "rf_nll", "ntp"] = Field("dpo", description="dpo: Online DPO best vs worst; "
                                                       "rf_nll: NLL on the best candidate; ntp: NLL on the original suffix")
    beta: float = Field(0.1, gt=0)
    k_rollouts: int = Field(2, ge=0, description="policy rollouts per prefix")
    suffix_tokens: int | None = Field(None, ge=1, description="train on the first S tokens of each suffix and "
                                      "roll out S tokens (a CPU budget knob); default data.suffix_tokens (N)")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    rollout_engine: Literal["hf", "vllm"] = "hf"
    rollout_batch: int = Field(16, ge=1, description="sequences per generate() call (hf)")
    weight_sync_every: int = Field(10, ge=1, description="vllm: reload the newest checkpoint every M steps")
    use_rewrites: bool = Field(True, description="add the rewritten suffix to each candidate set when a "
                               "rewrite artifact has one")


class SFTConfig(TrainConfig):
    """Thinking mid-training, part 1: SFT on text with interleaved `<think>` spans."""

    lr: float = Field(2e-5, gt=0)
    max_tokens: int = Field(768, ge=16, description="tokens per training row (longer rows are cut)")
    thought_loss_weight: float = Field(1.0, ge=0, description="weight of thought tokens in the loss")


class RLMTConfig(TrainConfig):
    """Thinking mid-training, part 2: RL with a judged binary reward, DrGRPO updates (method §7)."""

    lr: float = Field(1e-6, gt=0)
    group_size: int = Field(4, ge=2, description="G samples per prefix")
    thought_tokens: int = Field(64, ge=1, description="budget for the thought")
    predict_tokens: int = Field(32, ge=1, description="tokens of predicted suffix the judge compares")
    force_close: bool = Field(True, description="a thought still open at its budget is closed by the sampler "
                              "(METHOD §5.6 two-stage boundary; the forced tag is masked from the loss); "
                              "False: it is a format failure with reward 0")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    rollout_batch: int = Field(16, ge=1)


class EvalConfig(Section):
    """How much of each evaluation to run (sizes are per model; seeds are judge seeds)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    suites: list[str] = Field(default_factory=lambda: ["heldout_nll", "winrate", "coherence", "judged_factuality",
                                                       "safety_rtp", "xstest", "truthfulqa", "gsm8k", "math500",
                                                       "reward_gate", "probe", "thought_nll"])
    prefixes: int = Field(16, ge=1, description="held-out prefixes for win rate, factuality, reward gate, probe")
    max_prefix_tokens: int | None = Field(None, ge=1)
    continuation_tokens: int = Field(128, ge=1, description="greedy continuation length (the paper: 128)")
    judge_seeds: int = Field(4, ge=1)
    safety_prompts: int = Field(32, ge=1)
    xstest_prompts: int = Field(32, ge=1)
    refusal_tokens: int = Field(64, ge=1, description="XSTest: greedy answer length the refusal rule reads")
    truthfulqa_items: int = Field(64, ge=1)
    reasoning_problems: int = Field(16, ge=1)
    reasoning_k: int = Field(4, ge=1)
    reasoning_tokens: int = Field(256, ge=1)
    reasoning_temperature: float = Field(0.6, ge=0)
    thought_tokens: int = Field(64, ge=1, description="reward gate / probe: budget for the thought")
    predict_tokens: int = Field(32, ge=1)
    force_close: bool = Field(True, description="reward gate: close a thought still open at its budget, as RLMT does")
    reward_samples: int = Field(2, ge=1, description="reward gate: samples per prefix")
    thought_rows: int = Field(16, ge=1)
    batch_size: int = Field(16, ge=1)


class LifecycleConfig(Section):
    rewrite_limit: int = Field(16, ge=0, description="suffixes the rewriter rewrites before pretraining (0: none)")
    thought_limit: int | None = Field(None, ge=1, description="chunks the teacher annotates (None: all train chunks)")
    parallel: int = Field(1, ge=1, description="independent training/evaluation stages run at once, each with "
                          "cores/parallel torch threads on a CPU (1: one after another)")
