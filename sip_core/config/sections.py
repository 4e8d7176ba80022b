"""The config sections of the run, the data stage and the model roles (policy, judge, rewriter,
teacher). Unknown keys are errors (extra="forbid"), so a typo fails loudly."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sip_core.infra.paths import default_data_dir


class Section(BaseModel):
    """A config section: unknown keys and invalid assignments are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(Section):
    name: str = "default"
    root: str = Field("runs/default", description="artifact root URI: a local path or s3://bucket/prefix")
    state_dir: str | None = Field(
        None, description="local dir for DuckDB lineage/cache files; default <root>/_state for a "
        "local root, ~/.cache/sip/state/<hash of root> for a remote one (DuckDB needs a local file)")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options, e.g. endpoint_url")
    state: str | None = Field(None, description="where the judgment cache and lineage live. None: one local "
                              "DuckDB file under state_dir (embedded, zero setup); a DuckLake catalog URI "
                              "(postgres://user@host/db) shares them across machines, data under run.root")
    task_runner: Literal["threads", "ray"] = Field(
        "threads", description="where mapped per-shard tasks run: threads of the flow's process, or Ray "
        "(prefect-ray's RayTaskRunner; pip install -e '.[ray]')")
    ray_address: str | None = Field(None, description="Ray cluster to join, e.g. ray://head:10001; "
                                    "default: start a local Ray")
    max_failed_share: float | None = Field(
        None, ge=0, le=1, description="the share of a job's model calls that may fail (endpoint errors; for a "
        "job that scores answers, also answers that never parsed) before the job fails with the counts "
        "(CallsFailed) and commits nothing; below it, failed items are counted, never scored or marked done, "
        "and asked again next run. None: the job fails only when every call failed")


class DataConfig(Section):
    source: str | list[str] = Field("bundled:c4", description="local file/glob (JSONL, JSONL.gz, Parquet), "
                                    "`bundled:c4` / `bundled:redpajama`, or a Hugging Face dataset id; a list "
                                    "of file sources is read one after another (one corpus of their documents)")
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


class FilterConfig(Section):
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
    llm_stage: bool = Field(False, description="stage 2: the judge (P1) reads the prefix of each chunk of a "
                            "rule-flagged document, judge.safety_stage_seeds times; the chunk stays unsafe only if "
                            "every vote says unsafe (METHOD §2.3). A failed or unparseable vote is never a verdict: "
                            "nothing is committed and a rerun asks again")
    llm_stage_splits: list[Literal["train", "heldout"]] = Field(
        default_factory=lambda: ["heldout"], description="chunk splits stage 2 judges (METHOD §2.3: val/test "
        "only; train chunks keep the stage-1 label)")


class ModelConfig(Section):
    policy: str = Field("bundled:smollm2-135m-instruct",
                        description="a local HF folder, a hub id, or bundled:smollm2-135m-instruct")
    cache_dir: str | None = Field(None, description="where converted bundled models live; default ~/.cache/sip/models")


class LLMConfig(Section):
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
    """A judge role: the training judge (`judge`) or the evaluation judge (`eval_judge`)."""

    model: str = Field("none", description="openai: the served model name; local: a model reference or a "
                       "trained judge checkpoint; proxy: the small LM whose likelihood scores quality, or none "
                       "(lexical statistics only). A proxy's scoring LM may not be the policy or the DPO reference")
    verdict: Literal["sample", "probs"] | None = Field(
        None, description="sample: generate each verdict (S seeds = S votes); probs: prefill the answer up "
        "to the choice and read each option's probability in one call (local logits, openai logprobs), both "
        "orders averaged. None: what a trained judge checkpoint was trained with, else sample")
    seeds: int = Field(1, ge=1, description="samples per judgment (votes)")
    parse_retries: int = Field(3, ge=0, description="re-asks with a new seed when an answer does not parse")
    quality_mode: Literal["all_pairs", "pivot"] = Field(
        "all_pairs", description="all_pairs: every pair of candidates, both orders (METHOD §4.2); pivot: each "
        "candidate against the original suffix only (§4.3), which the pool must then hold")
    criteria: dict[str, float] = Field(default_factory=lambda: {"quality": 1.0},
                                       description="criteria summed into one score, with weights: quality, "
                                       "safety, factuality (method §4.4). The original suffix is factuality's "
                                       "reference and is not judged on it (it would always score 1): its score "
                                       "is its other criteria with their weights scaled up to the full weight; "
                                       "with factuality alone it is never chosen or rejected")
    tie_break_seed: int = Field(0, description="ties for best or worst are drawn at random; each training step's "
                                "draws are seeded from this and the step (logged as the metric tie_break_seed)")
    prefill: bool = Field(False, description="send each judge prompt's answer_prefix as the start of the reply "
                          "(vLLM and local backends): a weak judge then only has to pick")
    safety_stage_seeds: int = Field(8, ge=1, description="filter stage 2: a stage-1 unsafe chunk stays unsafe "
                                    "only if all seeds judge its prefix unsafe (METHOD §2.3: 8)")
    audit_items: int = Field(24, ge=1, description="chunks the judge audit corrupts into binary-choice items")
    audit_seeds: int = Field(2, ge=1)
    audit_llm_corruptions: bool = Field(False, description="also corrupt suffixes with the teacher (P4)")
    audit_both_modes: bool = Field(True, description="a model judge (local, openai) is also audited in the other "
                                   "verdict mode on the same items, reported side by side (the gate reads the "
                                   "configured mode)")
    audit_injection: bool = Field(True, description="also measure how often a document that instructs the "
                                  "judge flips its verdict")
    gate: Literal["enforce", "warn", "off"] = Field("warn", description="what training does when the audit fails")
    gate_min_accuracy: float = Field(0.6, ge=0, le=1)
    gate_dimensions: list[Literal["quality", "safety", "factuality"]] | None = Field(
        None, description="the audited dimensions whose accuracy the gate enforces (the others are reported "
        "only): those this judge's role uses. None: every audited dimension. The lifecycle sets it for a "
        "trained training judge to judge.criteria (and safety with filter.llm_stage)")
    gate_max_position_bias: float = Field(0.2, ge=0, le=0.5, description="max |share of first-option wins - 0.5|")
    gate_max_parse_failures: float = Field(0.2, ge=0, le=1)
    gate_max_injection_flips: float = Field(0.1, ge=0, le=1, description="max share of verdicts a document's "
                                            "injection (an instruction, a forged delimiter) may flip")

    @field_validator("gate", mode="before")
    @classmethod
    def _bare_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` (file or --set) as false

    @field_validator("criteria", mode="before")
    @classmethod
    def _weights_by_name(cls, value: Any) -> Any:
        # [quality, safety] is the obvious way to type equal weights; a misspelt name would score nothing.
        if isinstance(value, (list, tuple)):
            value = {name: 1.0 for name in value}
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"quality", "safety", "factuality"})
            if unknown:
                raise ValueError(f"unknown criteria {unknown} (quality, safety, factuality)")
            if not value:
                raise ValueError("needs at least one criterion")
        return value

    @model_validator(mode="after")
    def _names_a_model(self) -> JudgeConfig:
        if self.backend != "proxy" and self.model == "none":
            raise ValueError(f"a {self.backend} judge needs a model (none is the proxy's lexical-only setting)")
        return self


def resolve_wordlists(cfg: FilterConfig) -> Path:
    return Path(cfg.wordlists) if cfg.wordlists else default_data_dir() / "safety" / "wordlists"
