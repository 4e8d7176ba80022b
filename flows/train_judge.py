"""The `train-judge` flow (METHOD §5.3): prepare (cached), then fine-tune a small judge on
synthetic binary-choice items from the train split. Its final checkpoint is a judge model folder:
`judge.backend=local judge.model=<uri>` uses it with the prompts it was trained on."""

from __future__ import annotations

from typing import Literal

from prefect import flow
from pydantic import Field

from flows.prepare import prepare
from flows.train import publish_metrics
from sip_core.config import JobParams, SipConfig
from tasks.train_judge import train_judge_task


class TrainJudgeParams(JobParams):
    objective: Literal["sft", "grpo"] | None = Field(None, description="override judge_train.objective")
    init: str | None = Field(None, description="override judge_train.init: the judge's base model")

    def load(self) -> SipConfig:
        cfg = super().load()
        values = {f"judge_train.{k}": v for k, v in (("objective", self.objective), ("init", self.init)) if v}
        return cfg.replace(values) if values else cfg


@flow(name="train-judge", log_prints=True)
def train_judge(params: TrainJudgeParams = TrainJudgeParams()) -> dict:
    cfg = params.load()
    chunks = prepare(cfg)["chunks"]
    out = train_judge_task(cfg, chunks)
    publish_metrics(out, f"train-judge-{cfg.judge_train.objective}-metrics", cfg)
    print(f"train-judge ({cfg.judge_train.objective}): {cfg.judge_train.steps} steps -> {out.uri}"
          f"{' (reused)' if out.reused else ''}")
    return {"judge": out, "chunks": chunks}
