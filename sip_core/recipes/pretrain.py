"""Self-improving pretraining (method §5) and its controls, on the same data and steps.

Each step: a batch of prefixes; K policy rollouts of N tokens each; each prefix's candidate pool
(`pretrain.pool`; default: original suffix + rewrite when one exists + rollouts); then, by
`pretrain.pairing` (METHOD §4.4):
  best_vs_worst - the judge scores the pool (cached):
                  dpo    - sigmoid DPO, chosen = best, rejected = worst, vs the frozen initial policy;
                  rf_nll - NLL on the best candidate only;
                  ntp    - NLL on the original suffix (the next-token baseline: no rollouts, no judge);
  judge-free    - rewrite_vs_rollout (dpo: rewrite over a rollout), rewrite / rollout (ntp on it).
Sets whose scores are all equal carry no signal and are skipped (counted); so are prefixes whose
pool needs a rewrite their chunk lacks.
"""

from __future__ import annotations

from collections import defaultdict

from sip_core.augment.rewrites import rewrites_for
from sip_core.config import PAIRINGS, POOLS, SipConfig
from sip_core.infra import artifacts
from sip_core.infra.artifacts import Manifest, Provenance
from sip_core.infra.models import resolve_model
from sip_core.infra.run_context import RunContext
from sip_core.judge.scoring import score_sets, step_tie_break_seed
from sip_core.llm.factory import open_llm
from sip_core.recipes import _cli
from sip_core.training import data
from sip_core.training.judged_pairs import PairStats, candidates, check_rewrites, judge_identity, rows_in_pool
from sip_core.training.logprobs import batched_nll
from sip_core.training.objectives import OBJECTIVES, Pairs
from sip_core.training.recipe import Recipe, Timers, mean
from sip_core.training.rollout import (HFRolloutEngine, SamplingSpec, VLLMRolloutEngine, snapshot_weights,
                                       step_seed)

class Pretrain(Recipe):
    section_key = "pretrain"
    invalid_work = ("skipped_invalid", "sets")
    no_signal_hint = ("every candidate set tied or was skipped: it needs a judge that tells the candidates apart, "
                      "or more of them (pretrain.k_rollouts, pretrain.pool)")

    def __init__(self, cfg: SipConfig, chunks: Manifest, provenance: Provenance = Provenance()):
        pc, env = cfg.pretrain, RunContext(cfg, provenance)
        data.check_partition(chunks, pc, env.storage_options)  # pretrain.data selects enough chunks
        self.objective, self.pairing, self.chunks = OBJECTIVES[pc.objective], PAIRINGS[pc.pairing], chunks
        self.judge = open_llm(cfg, "judge", provenance) if pc.uses_judge else None
        reads_rewrites = pc.uses_pool and pc.use_rewrites and "rewrite" in POOLS[pc.pool]
        self.rewrites, rewrite_batches = rewrites_for(env, chunks) if reads_rewrites else ({}, [])
        if pc.uses_pool:  # before the policy loads: a run that would skip every prefix fails at once
            train_ids = data.read_chunk_rows(chunks, "train", env.storage_options, ["chunk_id"],
                                             pc.data).columns["chunk_id"]
            check_rewrites(train_ids, self.rewrites, pc.pool, pc.pairing)
        policy = artifacts.model_manifest(cfg.model.policy, resolve_model(cfg.model.policy, cfg.model.cache_dir))
        parents = [chunks, *rewrite_batches, policy]
        if self.judge:
            parents.append(artifacts.config_manifest("judge", judge_identity(cfg, self.judge.backend.model_id)))
        super().__init__(f"pretrain-{pc.objective}", env, pc, parents)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        pc = self.tc
        self.reference = self.session.reference_model() if self.objective.reference else None
        self.n_new = pc.suffix_tokens or self.cfg.data.suffix_tokens
        self.rows = self._rows("train")
        heldout = self._rows("heldout")
        self.heldout = heldout.take(range(min(pc.heldout_rows, len(heldout))))
        self.engine = self._rollout_engine()

    def _rows(self, split: str) -> data.Rows:
        rows = data.read_chunk_rows(self.chunks, split, self.env.storage_options, data.CHUNK_COLUMNS,
                                    self.tc.data if split == "train" else "all")
        return data.cap_suffixes(rows, self.n_new, self.tok)

    def _rollout_engine(self):
        pc, rt = self.tc, self.rt
        rolls_out = self.judge or "rollout" in (self.pairing.chosen, self.pairing.rejected)
        if not (rolls_out and pc.k_rollouts):
            return None
        if pc.rollout_engine == "vllm":
            return VLLMRolloutEngine(resolve_model(self.session.init_ref()), pc.weight_sync_every)
        return HFRolloutEngine(self.model, self.tok, rt.device, pc.rollout_batch, rt.dtype)

    # ------------------------------------------------------------------ ready work
    def work(self, step: int, timers: Timers, stats: PairStats):
        """(micro, pairs) for each micro-batch: prefixes -> pool -> pairs (judged or picked by
        origin); ntp on the original suffixes skips both."""
        pc = self.tc
        for micro, indices in self.session.micro_batches(len(self.rows), step):
            batch = self.rows.take(indices)
            prompts = [data.truncate_prefix(r["prefix_ids"], pc.max_prefix_tokens) for r in batch]
            if not pc.uses_pool:
                yield micro, Pairs(prompts, [r["suffix_ids"] for r in batch])
                continue
            kept = rows_in_pool(batch, self.rewrites, pc.pool, pc.pairing)
            stats["skipped_no_rewrite"] += len(batch) - len(kept)
            batch, prompts = [batch[i] for i in kept], [prompts[i] for i in kept]
            with timers("generate"):
                spec = SamplingSpec(self.n_new, pc.temperature, pc.top_p, True,
                                    step_seed(pc.seed, step, self.rt.rank, micro))
                engine = self.engine if batch else None  # every prefix skipped: nothing to roll out
                rollouts = engine.generate(prompts, pc.k_rollouts, spec) if engine else [[] for _ in batch]
            cands = candidates(batch, rollouts, self.rewrites, self.n_new, step, self.tok, pc.pool)
            if not self.judge:
                yield micro, stats.picked_pairs(prompts, cands, self.pairing)
                continue
            with timers("judge"):
                scored = score_sets(self.judge, cands.sets, self.cfg.judge, self.tie_break_seed(step))
            yield micro, stats.pairs(prompts, cands, scored)

    def tie_break_seed(self, step: int) -> int:
        return step_tie_break_seed(self.cfg.judge.tie_break_seed, step)

    # ------------------------------------------------------------------ one step
    def train_step(self, step: int) -> dict:
        timers, stats, losses, extras = Timers(), PairStats(), [], defaultdict(list)
        before = self._counters()
        self._sync_rollout_engine(step, timers)
        for micro, pairs in self.work(step, timers, stats):  # generate, judge
            with self.session.accumulating(micro), timers("update"):
                if not pairs:
                    self.session.backward_nothing()
                    continue
                with self.rt.autocast():
                    loss, extra = self.objective.loss(self.model, pairs, self.tok.pad_token_id, self.rt.device,
                                                      reference=self.reference, beta=self.tc.beta)
                self.session.backward(loss)
            losses.append(float(loss.detach()))
            for name, value in extra.items():
                extras[name].append(value)
        metrics = {"loss": mean(losses), **timers.metrics()}
        if self.tc.uses_pool:
            metrics.update({**stats.metrics(), **self._judge_metrics(before, timers)})
            metrics.update({name: mean(extras[name]) for name in self.objective.metrics})
        if self.judge:
            metrics["tie_break_seed"] = self.tie_break_seed(step)
        return metrics

    def _counters(self) -> tuple[int, int, int]:
        judge, engine = self.judge, self.engine
        return (judge.calls if judge else 0, judge.hits if judge else 0, engine.generated_tokens if engine else 0)

    def _judge_metrics(self, before: tuple[int, int, int], timers: Timers) -> dict:
        calls, hits, generated = (now - then for now, then in zip(self._counters(), before))
        rate = round(generated / timers["generate"], 1) if self.engine and timers["generate"] else 0.0
        return {"judge_calls": calls, "judge_cache_hits": hits, "gen_tokens_per_s": rate}

    def _sync_rollout_engine(self, step: int, timers: Timers) -> None:
        """vLLM holds its own copy of the weights: reload the current ones every weight_sync_every steps."""
        pc = self.tc
        if pc.rollout_engine == "vllm" and self.engine and step and step % pc.weight_sync_every == 0:
            folder = snapshot_weights(self.session.module, self.tok, self.session.run_dir, step)
            timers["sync"] += self.engine.sync(folder, step)

    # ------------------------------------------------------------------ held-out and summary
    def heldout_nll(self) -> float:
        prompts = [data.truncate_prefix(r["prefix_ids"], self.tc.max_prefix_tokens) for r in self.heldout]
        with self.rt.autocast():
            return batched_nll(self.session.module, prompts, [r["suffix_ids"] for r in self.heldout],
                               self.tok.pad_token_id, self.rt.device)

    def evaluate(self, step: int) -> dict:
        pc = self.tc
        if step == self.session.start_step or (step + 1) % pc.eval_every == 0 or step + 1 == pc.steps:
            return {"heldout_nll": self.heldout_nll()}
        return {}

    def summary(self) -> dict:
        return {"objective": self.tc.objective, "final_heldout_nll": self.heldout_nll()}


def train(cfg: SipConfig, chunks: Manifest, provenance: Provenance = Provenance()) -> Manifest:
    return Pretrain(cfg, chunks, provenance).run()


def main() -> None:
    _cli.main(__doc__, lambda cfg, inputs, prov: train(cfg, inputs["chunks"], prov), required=("chunks",))


if __name__ == "__main__":
    main()
