"""The config sections of the training recipes, the evaluations and the lifecycle."""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import Field, model_validator

from sip_core.config.sections import Section


class Pairing(NamedTuple):
    """Where a judge-free pairing takes its chosen (and rejected) completion from, by origin."""

    chosen: str | None
    rejected: str | None
    objective: str | None  # the one objective it trains with; None: any


# pretrain.pool -> each origin in the pool: "always", or "if_any" / "required" for the rewrite (a chunk
# without one: the rewrite is left out / the set is skipped)
POOLS: dict[str, dict[str, str]] = {
    "suffix+rewrite_if_any+rollouts": {"original": "always", "rewrite": "if_any", "rollout": "always"},
    "suffix+rollouts": {"original": "always", "rollout": "always"},
    "suffix+rewrite+rollouts": {"original": "always", "rewrite": "required", "rollout": "always"},
    "rollouts": {"rollout": "always"},
    "rewrite+rollouts": {"rewrite": "required", "rollout": "always"},
}
PAIRINGS: dict[str, Pairing] = {
    "best_vs_worst": Pairing(None, None, None),  # the judge picks
    "rewrite_vs_rollout": Pairing("rewrite", "rollout", "dpo"),
    "rewrite": Pairing("rewrite", None, "ntp"),
    "rollout": Pairing("rollout", None, "ntp"),
}


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
    warmup_steps: int = Field(0, ge=0, description="linear warmup from lr/warmup_steps to lr")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="after warmup: constant lr, or cosine decay to lr * min_lr_ratio at the "
        "last step (METHOD §5.1)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine: the last step's lr as a share of lr "
                                "(the paper: 0.1)")
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
    max_invalid_share: float = Field(0.5, ge=0, le=1, description="stop with one line, committing no final/, once "
                                     "more than this share of the work seen so far was skipped for failed or "
                                     "unparseable judgments (checked after each step)")
    allow_no_update: bool = Field(False, description="commit final/ even when no step updated the model "
                                  "(every judgment valid, but no step had a training signal: all candidate "
                                  "sets tied, all group rewards equal); false: such a run stops with one line "
                                  "and commits nothing. For plumbing runs (the smoke preset's proxy judge), "
                                  "never for a model anyone uses")


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
    data: Literal["all", "unsafe", "rest"] = Field(
        "all", description="which filter partitions the recipe trains on (stage-1/2 label of each chunk): "
        "unsafe (the paper's safety setting), rest, or all; recorded in lineage")
    use_rewrites: bool = Field(True, description="read rewrites from the committed rewrite batches; false: "
                               "no rewrites (the default pool is then suffix+rollouts)")
    pool: Literal[tuple(POOLS)] = Field(
        "suffix+rewrite_if_any+rollouts", description="each prefix's candidates (METHOD §4.1): the original "
        "suffix, its rewrite, the K rollouts. rewrite_if_any adds the rewrite when the chunk has one; a pool "
        "naming `rewrite` needs it, and a chunk without one is skipped and counted (skipped_no_rewrite)")
    pairing: Literal[tuple(PAIRINGS)] = Field(
        "best_vs_worst", description="what the objective trains on (METHOD §4.4). best_vs_worst: the judge "
        "scores the pool (dpo: best vs worst, rf_nll: best; ntp ignores the pool: the original suffix). "
        "Judge-free, picked from the pool by origin: rewrite_vs_rollout (dpo: chosen = rewrite, rejected = "
        "first rollout), rewrite (ntp on the rewrite), rollout (ntp on the first rollout)")

    @property
    def uses_judge(self) -> bool:
        """The judge scores the pool (best_vs_worst with dpo or rf_nll); ntp and judge-free pairings do without."""
        return self.pairing == "best_vs_worst" and self.objective != "ntp"

    @property
    def uses_pool(self) -> bool:
        """Training pairs come from the candidate pool (judged or picked by origin), not the original suffix."""
        return self.uses_judge or PAIRINGS[self.pairing].chosen is not None

    @model_validator(mode="after")
    def _pairing_fits(self) -> PretrainConfig:
        pairing, members = PAIRINGS[self.pairing], POOLS[self.pool]
        if pairing.objective and self.objective != pairing.objective:
            raise ValueError(f"pretrain.pairing={self.pairing} trains with objective {pairing.objective}, "
                             f"not {self.objective}")
        if members.get("rewrite") == "required" and not self.use_rewrites:
            raise ValueError(f"pretrain.pool={self.pool} needs rewrites, but pretrain.use_rewrites is false")
        for origin in filter(None, (pairing.chosen, pairing.rejected)):
            if origin not in members:
                raise ValueError(f"pretrain.pairing={self.pairing} picks a {origin} from the pool, but "
                                 f"pretrain.pool={self.pool} has none")
            if origin == "rollout" and not self.k_rollouts:
                raise ValueError(f"pretrain.pairing={self.pairing} needs pretrain.k_rollouts >= 1")
        return self


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
    reward: Literal["binary", "expected"] = Field(
        "binary", description="binary: the judge's verdict, 1 when its mean vote (or P(1) from a probs judge) is "
        "over 0.5 (METHOD §5.6); expected: that vote's expectation over the judge's sampling, P(1) or the share of "
        "1-votes (the same objective without sampling noise; a group has a signal where the verdict never flips). "
        "The reward gate and the thought-use probe score the same reward")


class EvalConfig(Section):
    """How much of each evaluation to run (sizes are per model; seeds are judge seeds)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    suites: list[str] = Field(default_factory=lambda: ["heldout_nll", "winrate", "coherence", "judged_factuality",
                                                       "safety_rtp", "xstest", "truthfulqa", "gsm8k", "math500",
                                                       "reward_gate", "probe", "thought_nll", "winrate_unsafe",
                                                       "safety_unsafe_prefixes"],
                              description="winrate_unsafe and safety_unsafe_prefixes read the held-out chunks "
                              "stage 1 labelled unsafe (the paper's unsafe prefixes) and are left out when there "
                              "are none")
    prefixes: int = Field(16, ge=1, description="held-out prefixes for win rate, factuality, reward gate, probe")
    max_prefix_tokens: int | None = Field(None, ge=1)
    continuation_tokens: int = Field(128, ge=1, description="greedy continuation length (the paper: 128)")
    judge_seeds: int = Field(4, ge=1)
    safety_prompts: int = Field(32, ge=1)
    xstest_prompts: int = Field(32, ge=1)
    refusal_tokens: int = Field(64, ge=1, description="XSTest: greedy answer length the refusal rule reads")
    truthfulqa_items: int = Field(64, ge=1, description="TruthfulQA questions (MC1/MC2 by log-likelihood)")
    reasoning_problems: int = Field(16, ge=1, description="GSM8K and MATH-500 problems each")
    reasoning_k: int = Field(4, ge=1, description="samples per problem (Mean@k, Pass@k)")
    reasoning_tokens: int = Field(256, ge=1)
    reasoning_temperature: float = Field(0.6, ge=0)
    reward_samples: int = Field(2, ge=1, description="reward gate: samples per prefix")
    thought_rows: int = Field(16, ge=1, description="held-out chunks the teacher annotates for thought NLL")
    batch_size: int = Field(16, ge=1)


class LifecycleConfig(Section):
    setting: Literal["thinking", "safety"] = Field(
        "thinking", description="thinking: base -> SFT -> RLMT, base -> SIP -> SFT -> RLMT and base -> NTP; safety "
        "(METHOD Table 1's safety row): base, base -> NTP and base -> SIP(safety), both trained on pretrain.data "
        "(the unsafe partition) with the rewriter's rewrite in SIP's pools")
    train_rewriter: bool = Field(False, description="train the rewriter first (sip train-rewriter, cached) and "
                                 "rewrite with that checkpoint (rewriter.backend local)")
    rewrite_limit: int = Field(16, ge=0, description="suffixes the rewriter rewrites before pretraining (0: none)")
    thought_limit: int | None = Field(None, ge=1, description="chunks the teacher annotates (None: all train chunks)")
    train_judge: bool = Field(False, description="train the judge first (sip train-judge, cached), audit it with "
                              "gate enforce, and train SIP and RLMT against it; evaluations keep eval_judge")
    parallel: int = Field(1, ge=1, description="independent training/evaluation stages run at once, each with "
                          "cores/parallel torch threads on a CPU (1: one after another)")
