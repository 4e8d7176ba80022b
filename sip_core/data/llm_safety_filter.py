"""Unsafe filter, stage 2: the LLM safety verdict on each chunk's prefix over several seeds (METHOD §2.3).

The judge (P1) reads the **prefix** of every chunk cut from a stage-1 unsafe document (in the splits
`filter.llm_stage_splits`; §2.3: val/test only), once per seed (`judge.safety_stage_seeds`, 8). The
chunk stays "unsafe" only if every vote says unsafe; one safe vote sends it to "rest", with the
count in its reason (`llm-split-3/8`).

A failed or unparseable vote is never a verdict, safe or unsafe: an unparseable one is asked again
with a new seed (up to `parse_retries` new calls per run; the answers cached from earlier runs are
skipped over, so each run tries new seeds), and when any vote is still missing the stage raises
`StageTwoIncomplete` (a `CallsFailed`) with the counts: the chunk shard commits nothing, and a
rerun asks only the missing votes again (answered ones come from the judgment cache).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

import pyarrow as pa
import pyarrow.compute as pc

from sip_core.llm.cache import CachedLLM, CallsFailed, Judgment
from sip_core.llm.prompting import load_prompt

# Seeds tried per vote, across all runs, before a vote counts as unanswerable for good.
MAX_RESEEDS = 64


class StageTwoIncomplete(CallsFailed):
    """Some stage-2 votes failed or never parsed: nothing is committed; a rerun asks them again."""


class LLMSafetyStage:
    """Stage 2, run by the chunk stage (a document's prefixes exist only once it is chunked):
    `confirm_chunks` relabels a chunk table."""

    name = "llm-safety"

    def __init__(self, llm: CachedLLM | Callable[[], CachedLLM], seeds: int = 8, parse_retries: int = 3,
                 prefill: bool = False, splits: Iterable[str] = ("heldout",)):
        # `llm` may be a function that opens it: a shard with nothing to judge then loads no judge model
        self._llm, self.seeds, self.parse_retries, self.prefill = llm, seeds, parse_retries, prefill
        self.splits = tuple(splits)
        self.prompt = load_prompt("safety")

    @property
    def llm(self) -> CachedLLM:
        if callable(self._llm) and not isinstance(self._llm, CachedLLM):
            self._llm = self._llm()
        return self._llm

    def votes(self, texts: list[str]) -> tuple[list[list[Judgment]], int]:
        """`self.seeds` judgments per text (an unparseable one re-asked with new seeds), and the
        number of votes that needed a new seed."""
        requests = [self.prompt.render({"seed": s}, self.prefill, text=t) for t in texts for s in range(self.seeds)]
        out = self.llm.run(requests)
        fresh = [0] * len(out)  # new (uncached) re-asks of each vote in this run
        reseeded: set[int] = set()
        for attempt in range(1, MAX_RESEEDS + 1):
            bad = [i for i, j in enumerate(out) if j.status == "unparseable" and fresh[i] < self.parse_retries]
            if not bad:
                break
            again = self.llm.run([_reseed(requests[i], attempt) for i in bad])
            for i, judgment in zip(bad, again):
                out[i] = judgment
                fresh[i] += not judgment.cached
                reseeded.add(i)
        return [out[k * self.seeds:(k + 1) * self.seeds] for k in range(len(texts))], len(reseeded)

    def confirm_chunks(self, table: pa.Table) -> tuple[pa.Table, dict]:
        """The chunk table with stage 2's labels and reasons on the judged chunks (stage-1 unsafe,
        in `self.splits`), and the counts: judged, unsafe, rest, votes, reseeded votes."""
        judged = pc.and_(pc.equal(table["filter_label"], "unsafe"),
                         pc.is_in(table["split"], pa.array(self.splits, pa.string())))
        index = [i for i, flag in enumerate(judged.to_pylist()) if flag]
        stats = {"judged": len(index), "unsafe": 0, "rest": 0, "seeds": self.seeds, "splits": list(self.splits),
                 "votes": len(index) * self.seeds, "reseeded_votes": 0}
        if not index:
            return table, stats
        texts = table["prefix_text"].take(pa.array(index)).to_pylist()
        votes, stats["reseeded_votes"] = self.votes(texts)
        flat = [j for v in votes for j in v]
        failed = [j for j in flat if not j.ok]
        if failed:
            chunks = sum(1 for v in votes if any(not j.ok for j in v))
            first = next((j.error for j in failed if j.error), failed[0].status)
            raise StageTwoIncomplete(
                f"filter stage 2: {len(failed)} of {len(flat)} votes failed or never parsed, on {chunks} of "
                f"{len(index)} chunk prefixes (first: {first}); nothing was committed, and a rerun asks them again")
        labels, reasons = table["filter_label"].to_pylist(), table["filter_reason"].to_pylist()
        for i, chunk_votes in zip(index, votes):
            unsafe = sum(1 for j in chunk_votes if j.value is False)  # False = "not safe"
            if unsafe == self.seeds:
                labels[i], reasons[i] = "unsafe", f"llm-unanimous-{self.seeds}"
                stats["unsafe"] += 1
            else:
                labels[i], reasons[i] = "rest", f"llm-split-{unsafe}/{self.seeds}"
                stats["rest"] += 1
        table = table.set_column(table.schema.get_field_index("filter_label"), "filter_label",
                                 pa.array(labels, pa.string()))
        table = table.set_column(table.schema.get_field_index("filter_reason"), "filter_reason",
                                 pa.array(reasons, pa.string()))
        return table, stats


def _reseed(request, attempt: int):
    base = request.sampling.seed or 0
    return replace(request, sampling=request.sampling.with_seed(base + 1_000_003 * attempt))


def merge_stats(parts: Iterable[dict | None]) -> dict | None:
    """Stage-2 counts summed over shards (None when no shard ran stage 2)."""
    total: dict | None = None
    for part in parts:
        if not part:
            continue
        if total is None:
            total = dict(part)
            continue
        for key in ("judged", "unsafe", "rest", "votes", "reseeded_votes"):
            total[key] += part[key]
    return total
