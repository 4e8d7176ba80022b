"""Judge training (METHOD §5.3): fine-tune a small judge on synthetic binary-choice items.

Items (sip_core.judge.training_items) come from the chunk artifact's train split: original vs
rule-corrupted suffix in both option orders, and pointwise safety texts. Each item is rendered
with the compact judge prompts (sip_core/prompts/judge_quality.yaml, judge_safety.yaml) exactly
as the local backend sends them, answer prefilled up to the verdict.

- objective sft: cross-entropy on the answer after the prefill (the verdict token, then the end
  of the turn), the small-budget variant.
- objective grpo: G verdicts sampled per item from the judge's distribution over the two verdicts
  (their first tokens' logits, as probs mode reads a verdict); reward 1 when the verdict is the
  label's, else 0; DrGRPO advantages (reward - group mean, no std) and a constant length
  normalisation (the one-token verdict budget). No reasoning before the verdict (the paper's
  judges reason first; a 135M judge on a CPU budget answers directly).

The final checkpoint's config.json carries a `sip_judge` card (the prompt versions, verdict mode,
input cuts and items it was trained with): pointing `judge.model` at the folder uses them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sip_core.config import SipConfig
from sip_core.infra import artifacts, store
from sip_core.infra.artifacts import Manifest, Provenance
from sip_core.infra.models import ModelRefError, load_tokenizer, resolve_model
from sip_core.infra.run_context import RunContext
from sip_core.judge import training_items
from sip_core.llm.prompting import load_prompt
from sip_core.recipes import _cli
from sip_core.training import checkpoint
from sip_core.training.losses import drgrpo_loss, group_advantages
from sip_core.training.recipe import Recipe, Timers, mean

CARD_KEY = "sip_judge"
CARD_FORMAT = 1
# What the judge writes after its prefilled answer opening, per item label (a verdict, then end of turn).
ANSWERS = {"1": "1", "2": "2", "YES": " YES", "NO": " NO"}
OPTIONS = {"pair": ("1", "2"), "point": ("YES", "NO")}  # the two verdicts of each item kind


class NoJudgeItems(ValueError):
    """The chunk artifact gave no judge items to train on (a one-line error, exit 2)."""


def judge_card(ref: str) -> dict | None:
    """The `sip_judge` card of a judge checkpoint (its config.json), or None for a model without one."""
    folder = Path(ref).expanduser()
    if not (folder / "config.json").is_file():
        return None
    return json.loads((folder / "config.json").read_text()).get(CARD_KEY)


def check_init(init: str, cfg: SipConfig) -> str:
    """The judge's base model as a folder `from_pretrained` reads; ModelRefError (one line, exit 2)
    for a checkpoint that does not exist: a path to no model folder, an uncommitted remote one.
    A Hub id ("org/name") is left to from_pretrained."""
    if store.is_remote(init):
        try:
            found = artifacts.load_committed(init, cfg.run.storage_options)
        except Exception as exc:  # unreachable store, no credentials: still the input's fault  # noqa: BLE001
            raise ModelRefError(f"judge checkpoint {init} cannot be read: {str(exc).splitlines()[0]}") from None
        if found is None:
            raise ModelRefError(f"judge checkpoint not found: {init} (no committed checkpoint there)")
        return checkpoint.local_copy(init, cfg.run.storage_options)
    path = Path(init).expanduser()
    looks_local = path.is_absolute() or init.startswith((".", "~")) or init.count("/") >= 2 or \
        (len(path.parts) > 1 and Path(path.parts[0]).exists())
    if looks_local and not (path / "config.json").is_file():
        raise ModelRefError(f"judge checkpoint not found: {init} (no model folder there)")
    return resolve_model(init, cfg.model.cache_dir)


def chat_text(tokenizer, messages) -> str:
    """The text the local backend feeds the model for these messages (LocalHFBackend._prompt_text):
    the chat template up to the assistant turn, then the prefilled answer opening."""
    turns = [dict(m) for m in messages]
    prefill = turns.pop()["content"] if turns and turns[-1]["role"] == "assistant" else ""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n\n".join(m["content"] for m in turns) + "\n\n"
    return text + prefill


class Encoded:
    """One item as token ids: the prompt (ending in the prefill), its answer, the two verdicts'
    first tokens and which of them is right."""

    def __init__(self, item: dict, prompts: dict, tokenizer):
        fields = ({"prefix": item["prefix"], "option_1": item["option_1"], "option_2": item["option_2"]}
                  if item["kind"] == "pair" else {"text": item["text"]})
        req = prompts[item["kind"]].render(None, True, **fields)
        encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.item = item
        self.prompt = encode(chat_text(tokenizer, req.messages))
        self.answer = encode(ANSWERS[item["label"]]) + [tokenizer.eos_token_id]
        self.options = tuple(encode(ANSWERS[v])[0] for v in OPTIONS[item["kind"]])
        self.target = OPTIONS[item["kind"]].index(item["label"])


def check_options(prompts: dict, tokenizer) -> None:
    """The two verdicts of each kind must start with different tokens, or no logit can tell them apart."""
    for kind, verdicts in OPTIONS.items():
        firsts = [tokenizer(ANSWERS[v], add_special_tokens=False)["input_ids"][:1] for v in verdicts]
        if firsts[0] == firsts[1]:
            raise NoJudgeItems(f"judge tokenizer cannot tell {' / '.join(verdicts)} apart after "
                               f"{prompts[kind].answer_prefix!r} (same first token {firsts[0]})")


def left_pack(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention, positions), left padded: every row ends at the last column, where the
    verdict is predicted; positions count real tokens only."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        attn[i, width - len(r):] = 1
    positions = (attn.cumsum(1) - 1).clamp(min=0)
    return ids.to(device), attn.to(device), positions.to(device)


def last_logits(model, rows: list[list[int]], pad_id: int, device, keep: int = 1) -> torch.Tensor:
    """Next-token logits at the last `keep` positions of each row (B, keep, V), in fp32; the LM
    head runs on those positions only."""
    ids, attn, positions = left_pack(rows, pad_id, device)
    return model(input_ids=ids, attention_mask=attn, position_ids=positions, logits_to_keep=keep).logits.float()


@torch.no_grad()
def verdict_probs(model, encoded: list[Encoded], pad_id: int, device, batch_size: int = 8) -> list[float]:
    """Per item, the probability of the right verdict among the two (softmax over their first tokens)."""
    out: list[float] = []
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start:start + batch_size]
        logits = last_logits(model, [e.prompt for e in batch], pad_id, device)[:, -1]
        pair = torch.stack([logits[i, list(e.options)] for i, e in enumerate(batch)]).softmax(-1)
        out += [float(pair[i, e.target]) for i, e in enumerate(batch)]
    return out


def accuracy_by(encoded: list[Encoded], probs: list[float]) -> dict:
    """Accuracy overall, per rule and per dimension, and the first-option share of pair verdicts;
    `counts` holds each accuracy's number of items (for intervals and pooled rows)."""
    groups: dict[str, list[float]] = {}
    first = []
    for e, p in zip(encoded, probs):
        right = float(p > 0.5)
        rule = e.item["rule"] if e.item["kind"] == "pair" else f"{e.item['rule']}:point"
        for key in ("all", f"rule/{rule}", f"dimension/{e.item['dimension']}"):
            groups.setdefault(key, []).append(right)
        if e.item["kind"] == "pair":
            first.append(float((p > 0.5) == (e.target == 0)))
    return {**{k: round(mean(v), 4) for k, v in sorted(groups.items())},
            "first_option_share": round(mean(first), 4) if first else None, "n": len(encoded),
            "counts": {k: len(v) for k, v in sorted(groups.items())} | {"first_option_share": len(first)}}


class TrainJudge(Recipe):
    section_key = "judge_train"

    def __init__(self, cfg: SipConfig, chunks: Manifest, provenance: Provenance = Provenance()):
        env, jc = RunContext(cfg, provenance), cfg.judge_train
        base_folder = check_init(jc.init, cfg)  # a missing checkpoint: ModelRefError, exit 2
        self.prompts = {"pair": load_prompt(jc.quality_prompt), "point": load_prompt(jc.safety_prompt)}
        tokenizer = load_tokenizer(base_folder, cfg.model.cache_dir)
        check_options(self.prompts, tokenizer)
        self.items = training_items.build_items(env, chunks, jc, tokenizer, training_items.badwords(cfg.filter))
        rows = training_items.read_items(self.items, env.storage_options)
        self.train_items = [r for r in rows if r["split"] == "train"]
        self.validation_items = [r for r in rows if r["split"] == "validation"][: jc.validation_items]
        if not self.train_items:
            raise NoJudgeItems(f"chunk artifact {chunks.uri} gave no judge training items "
                               f"({self.items.stats}); use more chunks (judge_train.chunks) or other rules")
        prompts = {"prompts": {kind: p.key for kind, p in self.prompts.items()},
                   "text": {kind: [p.system, p.user, p.answer_prefix] for kind, p in self.prompts.items()}}
        parents = [self.items, artifacts.config_manifest("judge-prompts", prompts)]
        if Path(base_folder).is_dir():
            parents.append(artifacts.model_manifest(jc.init, base_folder))
        super().__init__("judge", env, jc, parents)

    def card(self) -> dict:
        jc = self.tc
        tasks = {"quality": "pair", "safety": "point"}
        return {"format": CARD_FORMAT, "prompts": {task: self.prompts[kind].key for task, kind in tasks.items()},
                "verdict": "probs", "prefill": True, "prefix_tokens": jc.prefix_tokens,
                "option_tokens": jc.option_tokens, "objective": jc.objective, "base_model": jc.init,
                "items": self.items.uri, "rules": sorted(jc.rules),
                "options": {task: {v: ANSWERS[v] for v in OPTIONS[kind]} for task, kind in tasks.items()}}

    def setup(self) -> None:
        self.session.module.config.update({CARD_KEY: self.card()})  # saved in config.json with every checkpoint
        self.train = [Encoded(r, self.prompts, self.tok) for r in self.train_items]
        self.validation = [Encoded(r, self.prompts, self.tok) for r in self.validation_items]
        self.before = self.validate() if self.session.start_step == 0 else {}

    def validate(self) -> dict:
        if not self.validation:
            return {}
        self.model.eval()
        with self.rt.autocast():
            probs = verdict_probs(self.session.module, self.validation, self.tok.pad_token_id, self.rt.device,
                                  self.tc.batch_size)
        self.model.train()
        report = accuracy_by(self.validation, probs)
        report.pop("counts")  # metrics and stats stay scalar; the held-out audit is where counts are read
        return report

    def train_step(self, step: int) -> dict:
        timers, metrics = Timers(), {"loss": [], "verdict_accuracy": [], "reward_mean": []}
        with timers("update"):
            for micro, indices in self.session.micro_batches(len(self.train), step):
                batch = [self.train[i] for i in indices]
                with self.session.accumulating(micro), self.rt.autocast():
                    loss, extra = (self._sft if self.tc.objective == "sft" else self._grpo)(batch, step, micro)
                    self.session.backward(loss)
                metrics["loss"].append(float(loss.detach()))
                for k, v in extra.items():
                    metrics[k].append(v)
        return {k: mean(v) for k, v in metrics.items() if v} | timers.metrics()

    def _sft(self, batch: list[Encoded], step: int, micro: int) -> tuple[torch.Tensor, dict]:
        """Cross-entropy on the answer tokens after the prefill (verdict, then end of turn)."""
        keep = max(len(e.answer) for e in batch)
        rows = [e.prompt + e.answer for e in batch]
        logits = last_logits(self.model, rows, self.tok.pad_token_id, self.rt.device, keep + 1)[:, :-1]
        targets = torch.full((len(batch), keep), -100, dtype=torch.long)
        for i, e in enumerate(batch):
            targets[i, keep - len(e.answer):] = torch.tensor(e.answer)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 targets.reshape(-1).to(logits.device), ignore_index=-100)
        first = torch.stack([logits[i, keep - len(e.answer), list(e.options)] for i, e in enumerate(batch)])
        right = (first.argmax(-1).cpu() == torch.tensor([e.target for e in batch])).float().mean()
        return loss, {"verdict_accuracy": float(right)}

    def _grpo(self, batch: list[Encoded], step: int, micro: int) -> tuple[torch.Tensor, dict]:
        """G verdicts sampled per item from the judge's two-option distribution (the verdict as
        probs mode reads it: no parse failure is possible); reward 1 for the label's verdict;
        DrGRPO: advantage = reward - group mean, loss normalised by the constant one-token budget."""
        g = self.tc.group_size
        logits = last_logits(self.model, [e.prompt for e in batch], self.tok.pad_token_id, self.rt.device)[:, -1]
        pair = torch.stack([logits[i, list(e.options)] for i, e in enumerate(batch)]) / self.tc.temperature
        logp = pair.log_softmax(-1)  # (B, 2)
        gen = torch.Generator().manual_seed(self.tc.seed * 1_000_003 + step * 101 + micro)
        samples = torch.multinomial(logp.detach().exp().cpu(), g, replacement=True, generator=gen)  # (B, G)
        rewards = (samples == torch.tensor([e.target for e in batch])[:, None]).float()
        advantages = group_advantages(rewards).to(logp.device)
        chosen = logp.gather(1, samples.to(logp.device)).reshape(-1, 1)  # log-prob of each sampled verdict
        loss = drgrpo_loss(chosen, torch.ones_like(chosen), advantages.reshape(-1), 1)
        return loss, {"reward_mean": float(rewards.mean())}

    def evaluate(self, step: int) -> dict:
        out = {f"before_{k}": v for k, v in self.before.items()} if step == self.session.start_step else {}
        if (step + 1) % self.tc.eval_every == 0 and step + 1 < self.tc.steps:
            out.update({f"validation_{k}": v for k, v in self.validate().items()})
        return out

    def summary(self) -> dict:
        after = self.validate()
        return {"items": self.items.uri, "train_items": len(self.train), "validation_items": len(self.validation),
                "card": self.card(), **{f"before_{k}": v for k, v in self.before.items()},
                **{f"after_{k}": v for k, v in after.items()}}


def train(cfg: SipConfig, chunks: Manifest, provenance: Provenance = Provenance()) -> Manifest:
    return TrainJudge(cfg, chunks, provenance).run()


def main() -> None:
    _cli.main(__doc__, lambda cfg, inputs, prov: train(cfg, inputs["chunks"], prov), required=("chunks",),
              user_errors=(NoJudgeItems, ModelRefError), name="train-judge")


if __name__ == "__main__":
    main()
