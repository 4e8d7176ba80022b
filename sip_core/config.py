"""The one config system: pydantic models, YAML files, `--set key=value` overrides.

Unknown keys are errors (extra="forbid"), so a typo in a YAML file or an override fails loudly
instead of silently running the default.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sip_core.infra.paths import default_data_dir


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    name: str = "default"
    root: str = Field("runs/default", description="artifact root URI: a local path or s3://bucket/prefix")
    state_dir: str | None = Field(
        None, description="local dir for DuckDB lineage/cache files; default <root>/_state for a "
        "local root, ~/.cache/sip/state/<hash of root> for a remote one (DuckDB needs a local file)")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options, e.g. endpoint_url")
    task_runner: Literal["threads", "ray"] = Field(
        "threads", description="where mapped per-shard tasks run: threads of the flow's process, or Ray "
        "(prefect-ray's RayTaskRunner; pip install -e '.[ray]')")
    ray_address: str | None = Field(None, description="Ray cluster to join, e.g. ray://head:10001; "
                                    "default: start a local Ray")


class DataConfig(_Section):
    source: str = Field("bundled:c4", description="local file/glob (JSONL, JSONL.gz, Parquet), "
                        "`bundled:c4` / `bundled:redpajama`, or a Hugging Face dataset id")
    hf_config: str | None = Field(None, description="HF dataset config name, e.g. sample-10BT")
    hf_split: str = "train"
    text_field: str = "text"
    id_field: str | None = Field(None, description="field holding a document id; default: id, then url")
    max_docs: int | None = Field(None, ge=1)
    suffix_tokens: int = Field(128, ge=1, description="N: the suffix is exactly N tokens")
    prefix_tokens: int = Field(1920, ge=1, description="max prefix length (left-truncated)")
    min_prefix_tokens: int = Field(16, ge=1, description="documents with less context before the suffix are skipped")
    split_point: Literal["random", "fixed"] = Field(
        "random", description="random: the suffix starts at a random multiple of N (method §2.2); "
        "fixed: it starts after min(prefix_tokens, doc_tokens - N) tokens ([repl]'s 384+128 layout)")
    chunks_per_doc: int = Field(1, ge=1)
    seed: int = 0
    heldout_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    shard_rows: int = Field(2048, ge=1)
    tokenize_batch: int = Field(256, ge=1)


class FilterConfig(_Section):
    wordlists: str | None = Field(None, description="dir with ldnoobw/, surge_profanity/; default: shared data")
    url_blocklist: str | None = None
    min_badwords: int = Field(5, ge=1)
    combine: Literal["or", "and"] = Field("or", description="badwords OR/AND blocklist hit; the paper's code uses AND")
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines: float = 0.9
    max_top_2gram: float = 0.2
    chunk_excluded: bool = Field(False, description="also chunk documents a quality rule excluded")
    llm_stage: bool = Field(False, description="stage 2: the judge confirms each rule-flagged document, "
                            "unsafe only if all judge.safety_stage_seeds verdicts agree")


class ModelConfig(_Section):
    policy: str = Field("bundled:smollm2-135m-instruct",
                        description="a local HF folder, a hub id, or bundled:smollm2-135m-instruct")
    cache_dir: str | None = Field(None, description="where converted bundled models live; default ~/.cache/sip/models")


class LLMConfig(_Section):
    """One model role (judge, rewriter, teacher): which backend, which model, how to call it."""

    backend: Literal["openai", "local", "proxy"] = "proxy"
    model: str = Field("bundled:smollm2-135m-instruct", description="openai: the served model name; "
                       "local: a model reference; proxy: the small LM whose likelihood scores quality")
    base_url: str | list[str] = Field("http://127.0.0.1:8000/v1", description="one URL or several, used round-robin")
    api_key_env: str = Field("OPENAI_API_KEY", description="env var holding the key (the key itself never "
                             "goes into config, manifests or logs)")
    api_key_block: str | None = Field(None, description="name of a Prefect Secret block holding the key")
    concurrency: int = Field(32, ge=1, description="requests in flight at once (openai)")
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0, description="on timeouts, connection errors, 429 and 5xx")
    backoff_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    batch_size: int = Field(16, ge=1, description="sequences per generate() call (local)")
    device: str = Field("auto", description="local: auto, cpu or cuda")
    temperature: float | None = Field(None, description="override the prompt's default")
    top_p: float | None = None
    max_tokens: int | None = None


class JudgeConfig(LLMConfig):
    seeds: int = Field(1, ge=1, description="samples per judgment (votes)")
    parse_retries: int = Field(3, ge=0, description="re-asks with a new seed when an answer does not parse")
    quality_mode: Literal["all_pairs", "pivot"] = "all_pairs"
    criteria: dict[str, float] = Field(default_factory=lambda: {"quality": 1.0},
                                       description="criteria summed into one score, with weights: quality, "
                                       "safety, factuality (method §4.4)")
    tie_break_seed: int = 0
    prefill: bool = Field(False, description="send each judge prompt's answer_prefix as the start of the reply "
                          "(vLLM and local backends): a weak judge then only has to pick")
    safety_stage_seeds: int = Field(4, ge=1, description="filter stage 2: unsafe only if all seeds agree")
    audit_items: int = Field(24, ge=1, description="chunks the judge audit corrupts into binary-choice items")
    audit_seeds: int = Field(2, ge=1)
    audit_llm_corruptions: bool = Field(False, description="also corrupt suffixes with the teacher (P4)")
    audit_injection: bool = Field(True, description="also measure how often a document that instructs the "
                                  "judge flips its verdict")
    gate: Literal["enforce", "warn", "off"] = Field("warn", description="what training does when the audit fails")
    gate_min_accuracy: float = Field(0.6, ge=0, le=1)
    gate_max_position_bias: float = Field(0.2, ge=0, le=0.5, description="max |share of first-option wins - 0.5|")
    gate_max_parse_failures: float = Field(0.2, ge=0, le=1)


class TrainConfig(_Section):
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


class EvalConfig(_Section):
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


class LifecycleConfig(_Section):
    rewrite_limit: int = Field(16, ge=0, description="suffixes the rewriter rewrites before pretraining (0: none)")
    thought_limit: int | None = Field(None, ge=1, description="chunks the teacher annotates (None: all train chunks)")
    parallel: int = Field(1, ge=1, description="independent training/evaluation stages run at once, each with "
                          "cores/parallel torch threads on a CPU (1: one after another)")


class SipConfig(_Section):
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    rewriter: LLMConfig = Field(default_factory=lambda: LLMConfig(backend="local"))
    teacher: LLMConfig = Field(default_factory=lambda: LLMConfig(backend="local"))
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rlmt: RLMTConfig = Field(default_factory=RLMTConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)

    def replace(self, values: dict[str, Any]) -> SipConfig:
        """A validated copy with dotted keys changed, as `--set` would: {"sft.init": uri}."""
        tree = self.model_dump()
        for key, value in values.items():
            _set_dotted(tree, key, value)
        return SipConfig.model_validate(tree)

    def section_hash(self, *names: str) -> str:
        """Stable hash of the named sections: what a stage's output depends on."""
        payload = {n: getattr(self, n).model_dump(mode="json") for n in names}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """A config file or override is wrong; the message is one line naming the culprit."""


def _set_dotted(tree: dict, key: str, value: Any) -> None:
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


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_config_tree(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config file as a tree. `extends: other.yaml` (relative to this file) starts from
    that file's tree; this file's keys override it section by section, key by key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"config file {path} extends itself")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if not isinstance(parent, str):
        raise ConfigError(f"config file {path}: extends must be a file name, got {parent!r}")
    return _merge(read_config_tree(path.parent / parent, (*_seen, path.resolve())), tree)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> SipConfig:
    tree: dict[str, Any] = read_config_tree(path) if path is not None else {}
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    try:
        return SipConfig.model_validate(tree)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        what = "unknown config key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"{what}: {where}" + (f" (from {path})" if path else "")) from None


def resolve_wordlists(cfg: FilterConfig) -> Path:
    return Path(cfg.wordlists) if cfg.wordlists else default_data_dir() / "safety" / "wordlists"


class JobParams(BaseModel):
    """What a deployment's form asks for: a config file plus overrides (the same as the CLI)."""

    model_config = ConfigDict(extra="forbid")
    config_file: str | None = Field("configs/tiny.yaml", description="YAML config, relative to the project root")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides, e.g. data.max_docs=100")

    def load(self) -> SipConfig:
        path = self.config_file
        if path and not Path(path).is_absolute() and not Path(path).exists():
            path = str(Path(__file__).resolve().parent.parent / path)  # deployments run from elsewhere
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
    preset: Literal["smoke", "tiny"] | None = Field("tiny", description="configs/lifecycle-<preset>.yaml; "
                                                    "None: config_file")

    def load(self) -> SipConfig:
        if self.preset:
            return JobParams(config_file=lifecycle_preset(self.preset), overrides=self.overrides).load()
        return super().load()


def lifecycle_preset(name: str) -> str:
    """The config file of a lifecycle preset: the recipe config of that name, cut to the preset's
    time budget (smoke <= 5 min, tiny <= 30 min on a 2-core CPU)."""
    return f"configs/lifecycle-{name}.yaml"
