"""The rewriter-training task: launches the train-rewriter recipe as a subprocess (as tasks/train.py
does for the other recipes); a retry relaunches and the recipe resumes from its newest checkpoint."""

from __future__ import annotations

from prefect import get_run_logger, task

from sip_core.config import SipConfig
from sip_core.infra.artifacts import ArtifactRef
from tasks.train import OPTIONS, TrainResult, run_recipe


@task(name="train-rewriter", **OPTIONS)
def train_rewriter_task(cfg: SipConfig, chunks: ArtifactRef) -> TrainResult:
    """The trained rewriter's final checkpoint (reused when the same chunks, prompt, judge, base model
    and rewriter_train settings were trained before: the run folder is content-keyed)."""
    return run_recipe("sip_core.recipes.train_rewriter", cfg, cfg.rewriter_train.nproc_per_node,
                      ["--chunks", chunks.uri], get_run_logger().info)
