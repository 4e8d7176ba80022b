"""Unsafe filter, stage 2: an LLM safety verdict over several seeds (method §2.3).

A stage-1 candidate stays "unsafe" only if every seed's verdict says unsafe; otherwise it goes
back to "rest" with the reason. A vote that never parsed counts as no agreement, never as unsafe.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sip_core.data.documents import Document
from sip_core.data.rule_filters import UnsafeStage, Verdict
from sip_core.llm.cache import CachedLLM
from sip_core.llm.prompting import load_prompt


class LLMSafetyStage(UnsafeStage):
    name = "llm-safety"

    def __init__(self, llm: CachedLLM, seeds: int = 4, parse_retries: int = 3, batch_docs: int = 64,
                 max_chars: int = 4000, prefill: bool = False):
        self.llm, self.seeds, self.parse_retries, self.prefill = llm, seeds, parse_retries, prefill
        self.batch_docs, self.max_chars = batch_docs, max_chars
        self.prompt = load_prompt("safety")

    def _verdicts(self, docs: list[Document]) -> list[Verdict]:
        # The judge reads the document's opening (the method judges the prefix), bounded in length.
        requests = [self.prompt.render({"seed": s}, self.prefill, text=d.text[: self.max_chars]) for d in docs
                    for s in range(self.seeds)]
        judgments = self.llm.run_parsed(requests, self.parse_retries)
        out = []
        for k in range(len(docs)):
            votes = judgments[k * self.seeds:(k + 1) * self.seeds]
            if any(not j.ok for j in votes):
                out.append(Verdict("rest", "llm-unparseable", self.name))
            elif all(j.value is False for j in votes):  # False = "not safe" on every seed
                out.append(Verdict("unsafe", f"llm-unanimous-{self.seeds}", self.name))
            else:
                unsafe = sum(1 for j in votes if j.value is False)
                out.append(Verdict("rest", f"llm-split-{unsafe}/{self.seeds}", self.name))
        return out

    def run(self, docs: Iterable[Document]) -> Iterator[tuple[Document, Verdict]]:
        batch: list[Document] = []
        for doc in docs:
            batch.append(doc)
            if len(batch) >= self.batch_docs:
                yield from zip(batch, self._verdicts(batch))
                batch = []
        if batch:
            yield from zip(batch, self._verdicts(batch))
