"""Rewriter training (METHOD §5.4): GRPO on suffixes from both filter partitions.

Each train chunk becomes the P5 rewrite request (`sip_core/prompts/rewrite.yaml`), rendered
exactly as the local backend sends it (chat template, answer prefilled with the prefix's last
five words). The policy samples G rewrites; `sip_core.augment.rewriter_reward` scores them: an
exact copy of a safe suffix earns 1, an unsafe suffix's rewrite ½·(J_quality + J_safety) from the
training judge. DrGRPO: advantage = reward - group mean, the summed token log-probs divided by the
fixed generation budget. A group with a failed judgment is skipped and counted; a group whose
rewards are all equal carries no signal.

Before the first step and after the last, `validation_rows` chunks kept out of training (the
held-out split first, then train chunks left out; half unsafe where there are any) are rewritten
once each: the copy rate on safe suffixes (a rewrite that does not parse is no copy), and on unsafe
ones the judged safety and quality vs the original, by `eval_judge`. Judged by the training judge, those numbers would grade
the rewriter with its own reward: the summary then says so (`validation_circular`).

The final checkpoint is a rewriter model folder: `rewriter.backend=local rewriter.model=<uri>`
uses it (or serve it with infra/vllm/serve.sh); its config.json carries a `sip_rewriter` card.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path


from sip_core.augment.rewriter_reward import RewriteRewards, rewrite_rewards
from sip_core.augment.rewrites import rewrite_request
from sip_core.config import SipConfig
from sip_core.infra import artifacts
from sip_core.infra.artifacts import Manifest, Provenance
from sip_core.infra.models import ModelRefError, resolve_model
from sip_core.infra.run_context import RunContext
from sip_core.llm.backends.local import prompt_text
from sip_core.llm.factory import open_llm
from sip_core.llm.prompting import load_prompt
from sip_core.recipes import _cli
from sip_core.training import data
from sip_core.training.judged_pairs import judge_identity
from sip_core.training.logprobs import completion_logprobs
from sip_core.training.losses import drgrpo_loss, signal_groups
from sip_core.training.recipe import Recipe, Timers, mean
from sip_core.training.rollout import HFRolloutEngine, SamplingSpec, step_seed

CARD_KEY = "sip_rewriter"
COLUMNS = [*data.CHUNK_COLUMNS, "filter_label"]


class NoRewriterRows(ValueError):
    """The chunk artifact gave no suffix to train the rewriter on (a one-line error, exit 2)."""


class TrainRewriter(Recipe):
    section_key = "rewriter_train"
    invalid_work = ("skipped_invalid_groups", "groups")
    no_signal_hint = ("every group's rewards were equal: it needs a larger rewriter_train.group_size, a higher "
                      "rewriter_train.temperature, or a judge that tells the rewrites apart")

    def __init__(self, cfg: SipConfig, chunks: Manifest, provenance: Provenance = Provenance()):
        env, rc = RunContext(cfg, provenance), cfg.rewriter_train
        self.chunks, self.prompt = chunks, load_prompt("rewrite")
        self.judge = open_llm(cfg, "judge", provenance)
        self.eval_judge = open_llm(cfg, "eval_judge", provenance)
        data.check_partition(chunks, rc, env.storage_options, "rewriter_train.data")  # enough chunks selected
        base = resolve_model(rc.init or cfg.model.policy, cfg.model.cache_dir)
        prompt = {"prompt": self.prompt.key, "text": [self.prompt.system, self.prompt.user, self.prompt.answer_prefix]}
        parents = [chunks, artifacts.config_manifest("rewrite-prompt", prompt),
                   artifacts.config_manifest("judge", judge_identity(cfg, self.judge.backend.model_id))]
        if Path(base).is_dir():
            parents.append(artifacts.model_manifest(rc.init or cfg.model.policy, base))
        super().__init__("rewriter", env, rc, parents)

    def card(self) -> dict:
        rc = self.tc
        return {"format": 1, "prompt": self.prompt.key, "base_model": rc.init or self.cfg.model.policy,
                "data": rc.data, "copy_reward": rc.copy_reward, "judge": self.judge.backend.model_id}

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        rc = self.tc
        self.session.module.config.update({CARD_KEY: self.card()})  # saved in config.json with every checkpoint
        self.budget = rc.suffix_tokens or self.cfg.data.suffix_tokens
        train = self._rows("train", data.PARTITIONS[rc.data])
        self.validation = validation_rows(self._rows("heldout", None), train, rc.validation_rows)
        held = {r["chunk_id"] for r in self.validation}
        self.rows = [r for r in train if r["chunk_id"] not in held][: rc.chunks]
        if not self.rows:
            raise NoRewriterRows(f"chunk artifact {self.chunks.uri}: no train chunk for rewriter_train.data={rc.data} "
                                 f"({len(train)} selected, {len(held)} held out for validation)")
        self.engine = HFRolloutEngine(self.model, self.tok, self.rt.device, rc.rollout_batch, self.rt.dtype)
        self.before = self.validate() if self.session.start_step == 0 else {}

    def _rows(self, split: str, labels) -> list[dict]:
        table = data.cap_suffixes(data.read_rows(self.chunks, split, self.env.storage_options, COLUMNS),
                                  self.budget, self.tok)
        rows = [r for r in table.take(range(len(table))) if labels is None or r["filter_label"] in labels]
        for r in rows:
            r["split"] = split
            if self.tc.max_prefix_tokens:
                kept = data.truncate_prefix(r["prefix_ids"], self.tc.max_prefix_tokens)
                r["prefix_ids"], r["prefix_text"] = kept, self.tok.decode(kept)
            r["prompt_ids"] = self.tok(prompt_text(self.tok, rewrite_request(self.prompt, r)),
                                       add_special_tokens=False)["input_ids"]
        return rows

    # ------------------------------------------------------------------ ready work
    def rewrite(self, rows: list[dict], n: int, seed: int) -> list[list[list[int]]]:
        spec = SamplingSpec(self.budget, self.tc.temperature, self.tc.top_p, exact_length=False, seed=seed)
        return self.engine.generate([r["prompt_ids"] for r in rows], n, spec)

    def rewards(self, judge, judge_cfg, rows: list[dict], samples: list[list[int]], seed: int) -> RewriteRewards:
        texts = [self.tok.decode(ids, skip_special_tokens=True) for ids in samples]
        return rewrite_rewards(judge, judge_cfg, self.tok, rows, texts, self.tc.copy_reward, self.tc.judge_seeds, seed)

    # ------------------------------------------------------------------ one step
    def train_step(self, step: int) -> dict:
        rc, timers, stats = self.tc, Timers(), Counter()
        rewards_all, losses, copies, safe, safety = [], [], [], 0, []
        for micro, indices in self.session.micro_batches(len(self.rows), step):
            batch = [self.rows[i] for i in indices]
            with timers("generate"):
                groups = self.rewrite(batch, rc.group_size, step_seed(rc.seed, step, self.rt.rank, micro))
            with timers("judge"):
                flat_rows = [r for r in batch for _ in range(rc.group_size)]
                rewards = self.rewards(self.judge, self.cfg.judge, flat_rows, [s for g in groups for s in g], step)
            stats.update(unparseable_rewrites=rewards.unparseable, invalid_judgments=rewards.invalid_judgments,
                         judge_calls=rewards.judge_calls)
            with self.session.accumulating(micro), timers("update"):
                loss = self._update(batch, groups, rewards, stats)
            rewards_all += rewards.values
            copies += rewards.copies
            safe += len(rewards.copies) + rewards.unparseable - rewards.unparseable_unsafe
            safety += rewards.safety
            if loss is not None:
                losses.append(loss)
        return {"loss": mean(losses) if losses else 0.0, "reward_mean": mean(rewards_all),
                "copy_rate_safe": sum(copies) / safe if safe else None,  # an unparsed rewrite is no copy
                "judged_safety_unsafe": mean(safety) if safety else None, **stats, **timers.metrics()}

    def _update(self, batch: list[dict], groups, rewards: RewriteRewards, stats: Counter) -> float | None:
        """DrGRPO backward over the groups whose rewards differ; None without signal."""
        g, rt = self.tc.group_size, self.rt
        advantages, keep, counts = signal_groups(rewards.values, rewards.failed, g)
        stats.update(counts)
        if not keep:
            self.session.backward_nothing()
            return None
        advantages = advantages.to(rt.device)
        prompts = [batch[p]["prompt_ids"] for p in keep for _ in range(g)]
        samples = [groups[p][k] for p in keep for k in range(g)]
        with rt.autocast():
            _, per_token, mask = completion_logprobs(self.model, prompts, samples, self.tok.pad_token_id, rt.device)
            loss = drgrpo_loss(per_token, mask, advantages, self.budget)
            self.session.backward(loss)
        return float(loss.detach())

    # ------------------------------------------------------------------ before / after
    def validate(self) -> dict:
        """One rewrite per held-out chunk (fixed seed): copy rate and overlap on safe suffixes,
        judged safety and quality vs the original on unsafe ones (eval_judge)."""
        self.model.eval()
        with self.rt.autocast():
            samples = [g[0] for g in self.rewrite(self.validation, 1, step_seed(self.tc.seed, -1))]
        self.model.train()
        r = self.rewards(self.eval_judge, self.cfg.eval_judge, self.validation, samples, 0)
        unsafe = sum(row["filter_label"] == "unsafe" for row in self.validation)
        heldout = sum(row["split"] == "heldout" for row in self.validation)
        copy_rate = r.copy_rate()
        return {"rows": len(self.validation), "safe_rows": len(self.validation) - unsafe, "unsafe_rows": unsafe,
                "rows_from_heldout_split": heldout, "copies_safe": sum(r.copies),
                "copy_rate_safe": None if copy_rate is None else round(copy_rate, 4),
                "overlap_safe_parsed": _round(r.overlaps), "judged_unsafe": len(r.safety),
                "judged_safety_unsafe": _round(r.safety), "judged_quality_unsafe": _round(r.quality),
                "unparseable_safe": r.unparseable - r.unparseable_unsafe, "unparseable_unsafe": r.unparseable_unsafe,
                "invalid_judgments": r.invalid_judgments}

    def evaluate(self, step: int) -> dict:
        return {f"before_{k}": v for k, v in self.before.items()} if step == self.session.start_step else {}

    def summary(self) -> dict:
        after = self.validate()
        circular = judge_identity(self.cfg, self.judge.backend.model_id) == judge_identity(
            self.cfg.model_copy(update={"judge": self.cfg.eval_judge}), self.eval_judge.backend.model_id)
        # the run's key holds the training judge, not the grader: a reuse keeps these numbers, so say who graded
        return {"card": self.card(), "train_rows": len(self.rows), "validation_circular": circular,
                "validation_judge": self.eval_judge.backend.model_id,
                **{f"before_{k}": v for k, v in self.before.items()}, **{f"after_{k}": v for k, v in after.items()}}


def validation_rows(heldout: list[dict], train: list[dict], n: int) -> list[dict]:
    """Up to n chunks measured before and after: half unsafe where there are any (a corpus has few),
    the held-out split first, then train chunks, which are then left out of training. At most half
    of a kind's train chunks are taken: at least as many stay for training."""
    def kind(rows: list[dict], unsafe: bool) -> list[dict]:
        return [r for r in rows if (r["filter_label"] == "unsafe") == unsafe]

    pools = {name: kind(heldout, unsafe) + kind(train, unsafe)[: len(kind(train, unsafe)) // 2]
             for name, unsafe in (("unsafe", True), ("safe", False))}
    unsafe = pools["unsafe"][: n // 2]
    return unsafe + pools["safe"][: n - len(unsafe)]


def _round(values: list) -> float | None:
    return round(sum(map(float, values)) / len(values), 4) if values else None


def train(cfg: SipConfig, chunks: Manifest, provenance: Provenance = Provenance()) -> Manifest:
    return TrainRewriter(cfg, chunks, provenance).run()


def main() -> None:
    _cli.main(__doc__, lambda cfg, inputs, prov: train(cfg, inputs["chunks"], prov), required=("chunks",),
              user_errors=(NoRewriterRows, ModelRefError), name="train-rewriter")


if __name__ == "__main__":
    main()
