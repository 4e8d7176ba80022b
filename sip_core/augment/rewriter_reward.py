"""The rewriter's GRPO reward (METHOD §5.4).

- A safe suffix (any filter label but `unsafe`) earns 1 for an exact copy, else 0; with
  `copy_reward: overlap` it earns the token overlap instead (denser, for small budgets).
- An unsafe suffix earns ½·(J_quality + J_safety): J_quality is the judge's probability that the
  rewrite continues the prefix better than the original (both option orders), J_safety the
  probability that the rewrite is safe; each averaged over `seeds` votes (one call per term for a
  probs judge, which reads the expected vote).
- A sample that does not parse as a rewrite (an echoed marker or instruction, or nothing) earns
  0: it is the policy's own output, never sent to the judge.
- A judgment that failed or never parsed gives no reward at all: the sample is marked `failed`,
  and the caller skips its group (a failure is never training signal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sip_core.augment.rewrites import rewrite_ids, token_overlap
from sip_core.llm.cache import CachedLLM
from sip_core.llm.parsers import parse_rewrite


@dataclass
class RewriteRewards:
    values: list[float]
    failed: list[bool]  # a judgment of this sample failed: its value is no reward
    unparseable: int = 0
    unparseable_unsafe: int = 0  # of those, rewrites of unsafe suffixes
    judge_calls: int = 0
    invalid_judgments: int = 0
    copies: list[bool] = field(default_factory=list)  # safe rows only: exact copy
    overlaps: list[float] = field(default_factory=list)  # safe rows only
    safety: list[float] = field(default_factory=list)  # unsafe rows only: J_safety
    quality: list[float] = field(default_factory=list)  # unsafe rows only: J_quality

    def copy_rate(self) -> float | None:
        """Exact copies over every safe row's rewrite: one that did not parse is no copy."""
        safe = len(self.copies) + self.unparseable - self.unparseable_unsafe
        return sum(self.copies) / safe if safe else None


def rewrite_rewards(judge: CachedLLM | None, judge_cfg, tokenizer, rows: Sequence[dict], texts: Sequence[str],
                    copy_reward: str = "exact", seeds: int = 5, seed: int = 0) -> RewriteRewards:
    """One reward per (row, sampled text): the text the rewriter wrote after the prefilled prefix
    ending. `judge` may be None when no row is unsafe."""
    values, failed, out = [0.0] * len(texts), [False] * len(texts), RewriteRewards([], [])
    judged: list[tuple[int, str]] = []
    for i, (row, text) in enumerate(zip(rows, texts)):
        parsed = parse_rewrite(text)
        if not parsed.ok:
            out.unparseable += 1
            out.unparseable_unsafe += row["filter_label"] == "unsafe"
            continue
        if row["filter_label"] == "unsafe":
            judged.append((i, parsed.value))
            continue
        ids = rewrite_ids(tokenizer, parsed.value, row["suffix_ids"])
        overlap = token_overlap(list(row["suffix_ids"]), ids)
        out.copies.append(ids == list(row["suffix_ids"]))
        out.overlaps.append(overlap)
        values[i] = float(out.copies[-1]) if copy_reward == "exact" else overlap
    if judged:
        if judge is None:
            raise ValueError("unsafe suffixes need a judge for their reward")
        _judge_unsafe(judge, judge_cfg, rows, judged, seeds, seed, values, failed, out)
    out.values, out.failed = values, failed
    return out


def _judge_unsafe(judge, judge_cfg, rows, judged, seeds, seed, values, failed, out) -> None:
    from sip_core.judge.spec import judge_spec, verdict_share

    spec = judge_spec(judge_cfg)  # a trained judge is asked its own way (prompt version, prefill, probs)
    votes = {task: range(1 if spec.probs(task) else seeds) for task in ("quality", "safety")}
    tagged = []
    for i, text in judged:
        original, prefix = rows[i]["suffix_text"], rows[i]["prefix_text"]
        for s in votes["quality"]:
            for first in (1, 2):  # both orders: position preference cancels where the judge cannot decide
                options = (text, original) if first == 1 else (original, text)
                tagged.append(((i, "quality", first), spec.render("quality", {"seed": seed * 1000 + s}, prefix=prefix,
                                                                  option_1=options[0], option_2=options[1])))
        for s in votes["safety"]:
            tagged.append(((i, "safety", 0), spec.render("safety", {"seed": seed * 1000 + s}, text=text)))
    before = judge.calls
    judgments = judge.run_parsed([r for _, r in tagged], judge_cfg.parse_retries)
    out.judge_calls += judge.calls - before
    shares: dict[tuple[int, str], list[float]] = {}
    for (i, task, first), j in zip((t for t, _ in tagged), judgments):
        share = verdict_share(j, task, first if task == "quality" else True)  # the rewrite's win / safe
        if share is None:
            failed[i] = True
            out.invalid_judgments += 1
            continue
        shares.setdefault((i, task), []).append(share)
    for i, _ in judged:
        if failed[i]:
            continue
        j_quality = sum(shares[(i, "quality")]) / len(shares[(i, "quality")])
        j_safety = sum(shares[(i, "safety")]) / len(shares[(i, "safety")])
        out.quality.append(j_quality)
        out.safety.append(j_safety)
        values[i] = 0.5 * (j_quality + j_safety)
