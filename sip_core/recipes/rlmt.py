"""Thinking mid-training, part 2 (method §7): RLMT with a judged binary reward and DrGRPO.

From a prefix the policy writes `<think>` thought `</think>` and then a predicted suffix; the
judge compares the prediction with the true suffix (0/1). G samples per prefix; advantage =
reward - group mean (no std normalisation); the summed token log-probs are divided by the fixed
generation budget (constant length normalisation). Groups whose G rewards are all equal carry no
signal; they are counted and contribute nothing.

With thought data (METHOD §2.6, §5.6 [repl]) each prefix ends at a teacher thought position in
the data's RL half, positions only: the augmented text before that thought (earlier teacher
thoughts kept), then the policy's own thought; the reference is the next raw tokens. An RL half
with no usable row is an error (exit 2), never a fallback to other rows. Without thought data
the prefixes are the train chunks' own prefix/suffix boundaries.
"""

from __future__ import annotations

from collections import Counter


from sip_core.config import SipConfig
from sip_core.infra import artifacts
from sip_core.infra.artifacts import Manifest, Provenance
from sip_core.infra.run_context import RunContext
from sip_core.llm.factory import open_llm
from sip_core.llm.thought_markup import THINK_OPEN
from sip_core.recipes import _cli
from sip_core.training import data
from sip_core.training.data import NoThoughtData
from sip_core.training.judged_pairs import judge_identity
from sip_core.training.logprobs import completion_logprobs
from sip_core.training.losses import drgrpo_loss, signal_groups
from sip_core.training.recipe import Recipe, Timers
from sip_core.training.rollout import HFRolloutEngine, step_seed
from sip_core.training.think_then_predict import Rewards, judge_predictions, think_then_predict, unmask_forced


class Rlmt(Recipe):
    section_key = "rlmt"
    invalid_work = ("skipped_invalid_groups", "groups")
    no_signal_hint = ("every group's rewards were equal (the judge rewarded all or none of its predictions): it needs "
                      "more SFT first, a larger rlmt.group_size, longer rlmt.predict_tokens, or a judge that "
                      "rewards some predictions")

    def __init__(self, cfg: SipConfig, chunks: Manifest, thoughts: Manifest | None = None,
                 provenance: Provenance = Provenance()):
        self.chunks, self.thoughts = chunks, thoughts
        self.rl_half_rows: int | None = None  # gated RL-half rows of train chunks (with thought data)
        self.judge = open_llm(cfg, "judge", provenance)
        parents = [chunks, *([thoughts] if thoughts else []),
                   artifacts.config_manifest("judge", judge_identity(cfg, self.judge.backend.model_id))]
        super().__init__("rlmt", RunContext(cfg, provenance), cfg.rlmt, parents)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        rc, rt = self.tc, self.rt
        self.rows = data.cap_suffixes(self._rl_rows(), rc.predict_tokens, self.tok)
        self.engine = HFRolloutEngine(self.model, self.tok, rt.device, rc.rollout_batch, rt.dtype)
        self.opener = self.tok(THINK_OPEN, add_special_tokens=False)["input_ids"]
        self.budget = rc.thought_tokens + rc.predict_tokens

    def _rl_rows(self) -> data.Rows:
        """With thought data: a prompt at a teacher thought position in each row of its RL half
        whose chunk is a train chunk. Without: every train chunk at its prefix/suffix boundary."""
        so = self.env.storage_options
        if self.thoughts is None:
            return data.read_rows(self.chunks, "train", so, data.CHUNK_COLUMNS)
        rl = data.gated_thoughts(self.thoughts, "rl", so, data.chunk_ids(self.chunks, "train", so))
        self.rl_half_rows = len(rl)
        min_before = self.cfg.data.min_prefix_tokens
        rows = data.thought_prompts(rl, self.tok, min_before, self.tc.predict_tokens)
        if not len(rows):
            stats = self.thoughts.stats
            why = (f"none of its {len(rl)} gated RL-half rows of train chunks has a teacher thought with >= "
                   f"{min_before} tokens before it and >= {self.tc.predict_tokens} raw tokens after it" if len(rl) else
                   f"0 gated RL-half rows of train chunks ({stats.get('rows')} rows, {stats.get('kept')} kept, "
                   f"halves {stats.get('halves')}, split {self.thoughts.config.get('split')})")
            raise NoThoughtData(f"thought artifact {self.thoughts.uri}: no RLMT prompt: {why}; "
                                "run `sip thoughts` on more train chunks")
        return rows

    # ------------------------------------------------------------------ ready work
    def work(self, step: int, timers: Timers, stats: Counter):
        """(micro, prompts, groups, rewards) for each micro-batch: prefix + `<think>` -> G
        thought-then-prediction samples -> the judge's 0/1 rewards."""
        rc = self.tc
        for micro, indices in self.session.micro_batches(len(self.rows), step):
            batch = self.rows.take(indices)
            prompts = [data.truncate_prefix(r["prefix_ids"], rc.max_prefix_tokens) + self.opener for r in batch]
            with timers("generate"):
                groups = think_then_predict(self.engine, self.tok, prompts, rc.group_size, rc.thought_tokens,
                                            rc.predict_tokens, rc.temperature, rc.top_p,
                                            step_seed(rc.seed, step, self.rt.rank, micro), rc.force_close)
            with timers("judge"):
                rewards = self._judge(batch, groups, step, stats)
            yield micro, prompts, groups, rewards

    def _judge(self, batch: list[dict], groups, step: int, stats: Counter) -> Rewards:
        predictions, prefixes, references = [], [], []
        for r, group in zip(batch, groups):
            for sample in group:
                stats["forced_closes"] += sample.forced is not None
                predictions.append(self.tok.decode(sample.prediction_ids, skip_special_tokens=True).strip() or None)
                prefixes.append(r["prefix_text"])
                references.append(r["suffix_text"])
        rewards = judge_predictions(self.judge, self.cfg.judge, prefixes, predictions, references, seed=step,
                                    reward=self.tc.reward)
        stats["format_failures"] += rewards.format_failures
        stats["invalid_judgments"] += rewards.invalid
        return rewards

    # ------------------------------------------------------------------ one step
    def train_step(self, step: int) -> dict:
        timers, stats, rewards_all, losses = Timers(), Counter(), [], []
        calls0 = self.judge.calls
        for micro, prompts, groups, rewards in self.work(step, timers, stats):  # generate, judge
            with self.session.accumulating(micro), timers("update"):
                loss = self._update(prompts, groups, rewards, stats)
            rewards_all += rewards.values
            if loss is not None:
                losses.append(loss)
        return {"loss": sum(losses) / len(losses) if losses else 0.0,
                "reward_mean": sum(rewards_all) / max(len(rewards_all), 1), **stats,
                "judge_calls": self.judge.calls - calls0, **timers.metrics()}

    def _update(self, prompts, groups, rewards: Rewards, stats: Counter) -> float | None:
        """DrGRPO backward over the groups whose rewards differ; the loss, or None without signal.
        A group with a failed judgment is skipped and counted: a failure is never a reward."""
        rc, rt = self.tc, self.rt
        adv, keep, counts = signal_groups(rewards.values, rewards.failed, rc.group_size)
        stats.update(counts)
        if not keep:
            self.session.backward_nothing()
            return None
        adv = adv.to(rt.device)
        sel_prompts = [prompts[p] for p in keep for _ in range(rc.group_size)]
        sel_samples = [groups[p][g] for p in keep for g in range(rc.group_size)]
        with rt.autocast():
            _, per_token, mask = completion_logprobs(self.model, sel_prompts, [s.ids for s in sel_samples],
                                                     self.tok.pad_token_id, rt.device)
            loss = drgrpo_loss(per_token, unmask_forced(mask, sel_prompts, sel_samples), adv, self.budget)
            self.session.backward(loss)
        return float(loss.detach())

    def summary(self) -> dict:
        source = "chunk boundaries" if self.thoughts is None else "teacher thought positions"
        return {"rows": len(self.rows), "prompts_from": source, "rl_half_rows": self.rl_half_rows}


def train(cfg: SipConfig, chunks: Manifest, thoughts: Manifest | None = None,
          provenance: Provenance = Provenance()) -> Manifest:
    return Rlmt(cfg, chunks, thoughts, provenance).run()


def main() -> None:
    _cli.main(__doc__, lambda cfg, inputs, prov: train(cfg, inputs["chunks"], inputs["thoughts"], prov),
              required=("chunks",), optional=("thoughts",), user_errors=(NoThoughtData,), name="rlmt")


if __name__ == "__main__":
    main()
