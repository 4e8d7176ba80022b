"""RLMT held-out metrics: the reward gate and the thought-use probe (METHOD §6.5).

Format (sip_core.training.think_then_predict): after a prefix the policy writes `<think>` thought `</think>` and then
its predicted continuation; the judge (P10, `judge_predictions`) compares the prediction with the
true suffix and never sees the thought. The prompt given to the policy is
`think_prompt(prefix)` = prefix + "<think>" (the template is a parameter everywhere). The
evaluation suite cuts prefixes and references, and samples, as RLMT training does (`rlmt.*`), so
both score the object RLMT optimises (`sip_core.evaluation.suite.rlmt_heldout`).

- `reward_gate`: k completions per held-out prefix, no update; mean reward with a Wilson 95%
  interval, per-prefix spread, format failures; go / no-go.
- `thought_use_probe`: the same prefixes with the thought replaced by (a) the model's own, (b) one
  from another prefix (a seeded derangement), (c) a blank one, (d) a generic one (fixed sentences,
  rotated); the model continues after `</think>`; reward per condition with intervals.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence

from pydantic import BaseModel, Field

from sip_core.config import JudgeConfig
from sip_core.evaluation.stats import EvalResult, Interval, clustered_interval, judge_id
from sip_core.llm.cache import CallsFailed
from sip_core.llm.thought_markup import THINK_CLOSE, THINK_OPEN
from sip_core.training.think_then_predict import judge_predictions, split_completion

THINK_TEMPLATE = "{prefix}" + THINK_OPEN


def think_prompt(prefix: str, template: str = THINK_TEMPLATE) -> str:
    """What the policy sees: the prefix followed by the `<think>` opener."""
    return template.format(prefix=prefix)


class RewardGateResult(EvalResult):
    metric: str = "rlmt_reward"
    reward: Interval = Field(description="mean reward over all samples (format failures score 0)")
    samples_per_prefix: int = 0
    format_failures: int = Field(0, description="completions whose thought never closed (no prediction)")
    invalid_judgments: int = Field(0, description="judgments that failed or never parsed (left out, counted)")
    invalid_rate: float = Field(0.0, description="(format failures + unparsed judgments) / samples")
    mean_prefix_std: float | None = None
    near_zero_variance_rate: float | None = Field(None, description="prefixes whose rewards have std < 1e-5")
    mixed_group_rate: float | None = Field(None, description="prefixes whose rewards differ (binary: both 0 and 1)")
    passed: bool = False
    reasons: list[str] = Field(default_factory=list)
    rewards: list[list[float]] = Field(default_factory=list)


def reward_gate(judge, cfg: JudgeConfig, prefixes: Sequence[str], references: Sequence[str],
                completions: Sequence[Sequence[str]], seed: int = 0, max_invalid: float = 0.05,
                max_near_zero: float = 0.5, reward: str = "binary") -> RewardGateResult:
    """Held-out RLMT reward. `completions[i]` holds the k texts the policy wrote after
    `think_prompt(prefixes[i])` (thought, `</think>`, prediction). Go when invalid_rate <=
    max_invalid and near-zero-variance rate <= max_near_zero (METHOD §6.5). `reward`: RLMT's
    (`judge_predictions`)."""
    if not len(prefixes) == len(references) == len(completions):
        raise ValueError("prefixes, references and completions differ in length")
    flat = [(i, split_completion(c)[1]) for i, group in enumerate(completions) for c in group]
    rewards = judge_predictions(judge, cfg, [prefixes[i] for i, _ in flat], [p for _, p in flat],
                                [references[i] for i, _ in flat], seed=seed, reward=reward)
    all_failed("reward gate", rewards)
    groups: list[list[float]] = [[] for _ in prefixes]
    for (i, _), v, failed in zip(flat, rewards.values, rewards.failed):
        if not failed:  # a failed judgment is no reward (counted in invalid_rate)
            groups[i].append(v)
    stds = [statistics.pstdev(g) for g in groups if g]
    n = len(flat)
    invalid_rate = (rewards.format_failures + rewards.invalid) / n if n else 0.0
    near_zero = sum(s < 1e-5 for s in stds) / len(stds) if stds else None
    mixed = sum(max(g) - min(g) > 1e-5 for g in groups if g) / len(stds) if stds else None
    reasons = []
    if invalid_rate > max_invalid:
        reasons.append(f"invalid rate {invalid_rate:.3f} > {max_invalid}")
    if near_zero is not None and near_zero > max_near_zero:
        reasons.append(f"near-zero-variance rate {near_zero:.3f} > {max_near_zero}")
    return RewardGateResult(
        n=n, seeds=[seed * 1000 + s for s in range(cfg.seeds)], judge=judge_id(judge),
        reward=clustered_interval([g for g in groups if g], "prefixes"),  # a prefix's samples are not independent
        samples_per_prefix=min((len(g) for g in completions), default=0),
        format_failures=rewards.format_failures, invalid_judgments=rewards.invalid, invalid_rate=invalid_rate,
        mean_prefix_std=sum(stds) / len(stds) if stds else None, near_zero_variance_rate=near_zero,
        mixed_group_rate=mixed, passed=n > 0 and not reasons, reasons=reasons, rewards=groups,
        details={"prefixes": len(prefixes), "calls": rewards.calls})


def all_failed(job: str, rewards) -> None:
    """CallsFailed when every prediction that was judged got a failed judgment: no result at all,
    never a reward of 0 (a rerun asks again: failed calls are not cached as answers)."""
    judged = len(rewards.failed) - rewards.format_failures
    if judged > 0 and sum(rewards.failed) >= judged:
        raise CallsFailed(f"{job}: all {judged} judged predictions failed or never parsed ({rewards.invalid} "
                          "judgments); nothing is reported and a rerun asks again")


# --------------------------------------------------------------------------- thought-use probe

GENERIC_THOUGHTS = (
    "Let me think about what this text is about and how it is likely to continue.",
    "I should keep the same topic, tone and style as the text so far.",
    "The next part probably adds details that follow from what was just said.",
    "I will continue the text in a natural and coherent way.",
)
CONDITIONS = ("own", "swapped", "blank", "generic")


class ProbeItem(BaseModel):
    prefix_index: int
    sample: int
    condition: str
    thought: str
    source_index: int | None = Field(None, description="prefix whose own thought this is (own, swapped)")


def derangement(n: int, seed: int = 0) -> list[int]:
    """A random permutation p of range(n) with p[i] != i for every i (n >= 2), seeded."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    rng = random.Random(seed)
    while True:
        p = list(range(n))
        rng.shuffle(p)
        if all(p[i] != i for i in range(n)):
            return p


def build_probe_conditions(own_thoughts: Sequence[Sequence[str]], seed: int = 0,
                           generic: Sequence[str] = GENERIC_THOUGHTS,
                           conditions: Sequence[str] = CONDITIONS) -> list[ProbeItem]:
    """One item per (prefix, sample, condition). own_thoughts[i][j] is the j-th thought the model
    wrote for prefix i. Swapped: the same sample index of prefix p[i] for a seeded derangement p
    (never the prefix's own; cycled when that prefix has fewer samples). Blank: "". Generic:
    `generic` rotated over (prefix, sample)."""
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown probe condition {sorted(unknown)[0]!r}")
    n = len(own_thoughts)
    perm = derangement(n, seed) if "swapped" in conditions else list(range(n))
    items: list[ProbeItem] = []
    counter = 0
    for i, thoughts in enumerate(own_thoughts):
        for j, own in enumerate(thoughts):
            for cond in conditions:
                if cond == "own":
                    items.append(ProbeItem(prefix_index=i, sample=j, condition=cond, thought=own, source_index=i))
                elif cond == "swapped":
                    src = own_thoughts[perm[i]]
                    items.append(ProbeItem(prefix_index=i, sample=j, condition=cond, thought=src[j % len(src)],
                                           source_index=perm[i]))
                elif cond == "blank":
                    items.append(ProbeItem(prefix_index=i, sample=j, condition=cond, thought=""))
                else:
                    items.append(ProbeItem(prefix_index=i, sample=j, condition=cond,
                                           thought=generic[counter % len(generic)]))
            counter += 1
    return items


def probe_prompt(prefix: str, thought: str, template: str = THINK_TEMPLATE) -> str:
    """prefix + `<think>` + thought + `</think>`: the model continues from here (a blank thought
    is an empty span)."""
    inner = f" {thought.strip()} " if thought.strip() else " "
    return think_prompt(prefix, template) + inner + THINK_CLOSE


class ProbeResult(EvalResult):
    metric: str = "thought_use_probe"
    by_condition: dict[str, Interval]
    format_failures: dict[str, int] = Field(default_factory=dict, description="empty predictions per condition")
    invalid_judgments: int = 0
    derangement_seed: int = 0
    items: list[ProbeItem] = Field(default_factory=list)
    rewards: list[float] = Field(default_factory=list, description="per item, same order as items")


def score_probe(judge, cfg: JudgeConfig, prefixes: Sequence[str], references: Sequence[str],
                items: Sequence[ProbeItem], predictions: Sequence[str | None], seed: int = 0,
                derangement_seed: int = 0, reward: str = "binary") -> ProbeResult:
    """Judge each item's prediction (the text the model wrote after `</think>`) against the true
    suffix; mean reward per condition, its interval clustered by prefix."""
    if len(items) != len(predictions):
        raise ValueError("one prediction per probe item")
    preds = [p.strip() if p and p.strip() else None for p in predictions]
    rewards = judge_predictions(judge, cfg, [prefixes[it.prefix_index] for it in items], preds,
                                [references[it.prefix_index] for it in items], seed=seed, reward=reward)
    all_failed("thought-use probe", rewards)
    by_cond: dict[str, dict[int, list[float]]] = {}  # condition -> prefix -> rewards
    fails: dict[str, int] = {}
    for it, p, v, failed in zip(items, preds, rewards.values, rewards.failed):
        if failed:  # a failed judgment is no reward (counted in invalid_judgments)
            continue
        by_cond.setdefault(it.condition, {}).setdefault(it.prefix_index, []).append(v)
        fails[it.condition] = fails.get(it.condition, 0) + (p is None)
    return ProbeResult(n=len(items), seeds=[seed * 1000 + s for s in range(cfg.seeds)], judge=judge_id(judge),
                       by_condition={c: clustered_interval(list(v.values()), "prefixes") for c, v in by_cond.items()},
                       format_failures=fails, invalid_judgments=rewards.invalid, derangement_seed=derangement_seed,
                       items=list(items), rewards=rewards.values, details={"prefixes": len(prefixes)})


def thought_use_probe(judge, cfg: JudgeConfig, prefixes: Sequence[str], references: Sequence[str],
                      own_thoughts: Sequence[Sequence[str]], continue_fn: Callable[[list[str]], list[str]],
                      seed: int = 0, template: str = THINK_TEMPLATE, generic: Sequence[str] = GENERIC_THOUGHTS,
                      conditions: Sequence[str] = CONDITIONS,
                      policy_prefixes: Sequence[str] | None = None, reward: str = "binary") -> ProbeResult:
    """Build the probe conditions, let the model continue after each `</think>` (`continue_fn`:
    prompt texts -> one continuation each, e.g. `lambda ps: [c[0] for c in sampler(ps, 1)]`) and
    score them. `own_thoughts` come from the model's own completions (`split_completion`).
    `policy_prefixes`: the prefix texts the model sees (e.g. truncated as in RLMT training) when
    they differ from the `prefixes` the judge reads."""
    items = build_probe_conditions(own_thoughts, seed, generic, conditions)
    seen = prefixes if policy_prefixes is None else policy_prefixes
    prompts = [probe_prompt(seen[it.prefix_index], it.thought, template) for it in items]
    predictions = continue_fn(prompts)
    return score_probe(judge, cfg, prefixes, references, items, predictions, seed=seed, derangement_seed=seed,
                       reward=reward)
