"""The `train-rewriter` flow (METHOD §5.4): prepare (cached), then GRPO on the train split's
suffixes with the §5.4 reward. Its final checkpoint is a rewriter model folder:
`rewriter.backend=local rewriter.model=<uri>` uses it."""

from __future__ import annotations

from prefect import flow
from pydantic import Field

from flows.prepare import prepare
from flows.train import publish_metrics
from sip_core.config import JobParams, SipConfig
from tasks.train_rewriter import train_rewriter_task


class TrainRewriterParams(JobParams):
    init: str | None = Field(None, description="override rewriter_train.init: the rewriter's base model")

    def load(self) -> SipConfig:
        cfg = super().load()
        return cfg.replace({"rewriter_train.init": self.init}) if self.init else cfg


@flow(name="train-rewriter", log_prints=True)
def train_rewriter(params: TrainRewriterParams = TrainRewriterParams()) -> dict:
    cfg = params.load()
    chunks = prepare(cfg)["chunks"]
    out = train_rewriter_task(cfg, chunks)
    publish_metrics(out, "train-rewriter-metrics", cfg)
    print(f"train-rewriter: {cfg.rewriter_train.steps} steps -> {out.uri}{' (reused)' if out.reused else ''}")
    return {"rewriter": out, "chunks": chunks}
