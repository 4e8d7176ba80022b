"""Model-facing helpers: turn a (model, tokenizer) into the small text callables the evaluations
take, so that tests can pass fakes and callers can pass anything that generates text.

    TextFn  = Callable[[list[str], int], list[list[str]]]   # prompts, n -> n texts per prompt

Decoding uses `HFRolloutEngine` (left padding, per-batch seeding); temperature 0 means greedy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

TextFn = Callable[[list[str], int], list[list[str]]]


def _engine(model, tokenizer, device, batch_size: int):
    from sip_core.training.rollout import HFRolloutEngine

    return HFRolloutEngine(model, tokenizer, device, batch_size=batch_size)


def _decode(tokenizer, rows: Sequence[Sequence[int]]) -> list[str]:
    return tokenizer.batch_decode([list(r) for r in rows], skip_special_tokens=True)


def greedy_continuations(model, tokenizer, prefix_ids: Sequence[Sequence[int]], max_new_tokens: int,
                         device="cpu", exact_length: bool = False, batch_size: int = 16) -> list[str]:
    """One greedy continuation per prefix (token ids in, decoded text out, special tokens
    dropped). `exact_length=True` suppresses EOS so every continuation is max_new_tokens long
    (the paper's "greedy 128 tokens"); by default a continuation stops at EOS."""
    from sip_core.training.rollout import SamplingSpec

    spec = SamplingSpec(max_new_tokens=max_new_tokens, temperature=0.0, exact_length=exact_length, seed=0)
    out = _engine(model, tokenizer, device, batch_size).generate([list(p) for p in prefix_ids], 1, spec)
    return _decode(tokenizer, [rows[0] for rows in out])


def text_sampler(model, tokenizer, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 device="cpu", seed: int = 0, chat: bool = False, system: str | None = None,
                 batch_size: int = 16) -> TextFn:
    """A TextFn over a HF model: each prompt is tokenized as plain text (no special tokens added),
    or with `chat=True` wrapped in the tokenizer's chat template as one user turn (generation
    prompt added); n samples per prompt at `temperature` (0 = greedy), stopping at EOS."""
    from sip_core.training.rollout import SamplingSpec

    engine = _engine(model, tokenizer, device, batch_size)

    def encode(prompt: str) -> list[int]:
        if not chat:
            return tokenizer(prompt, add_special_tokens=False)["input_ids"]
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(prompts: list[str], n: int) -> list[list[str]]:
        spec = SamplingSpec(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            exact_length=False, seed=seed)
        out = engine.generate([encode(p) for p in prompts], n, spec)
        return [_decode(tokenizer, rows) for rows in out]

    return generate


def think_sampler(model, tokenizer, thought_tokens: int, predict_tokens: int, temperature: float = 1.0,
                  top_p: float = 1.0, device="cpu", seed: int = 0, force_close: bool = True,
                  batch_size: int = 16) -> TextFn:
    """A TextFn for prompts ending in `<think>`: each text is thought + `</think>` + prediction,
    sampled as RLMT samples them (`sip_core.training.think_then_predict.think_then_predict`, thought budget first)."""
    from sip_core.training.think_then_predict import think_then_predict

    engine = _engine(model, tokenizer, device, batch_size)

    def generate(prompts: list[str], n: int) -> list[list[str]]:
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        groups = think_then_predict(engine, tokenizer, ids, n, thought_tokens, predict_tokens, temperature, top_p,
                                    seed, force_close)
        return [_decode(tokenizer, [s.ids for s in group]) for group in groups]

    return generate
