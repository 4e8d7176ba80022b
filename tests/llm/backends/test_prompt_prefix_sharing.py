"""Judge prompts put what a candidate set shares (system text, instructions, the document prefix,
the reference) ahead of the candidates, byte for byte the same in every request of the set, so a
server's prefix cache (vLLM) prefills it once per set. The fence tokens of the shared blocks are
a hash of the shared values only; each candidate's block a hash of its value and those before it."""

from __future__ import annotations

import os

import pytest

from sip_core.llm.prompting import PromptError, Prompt, fence_token, load_prompt

PREFIX = "The harbour town woke slowly. Fishing boats came in with the tide, and the market"
REFERENCE = " stalls filled with the morning's catch."
CANDIDATES = [" opened late.", " sold nothing at all that day", " smelled of salt and diesel."]


def joined(req) -> str:
    return "\n".join(m["content"] for m in req.messages)


def common_prefix(a: str, b: str) -> str:
    return a[:len(os.path.commonprefix([a, b]))]


@pytest.mark.parametrize("name, fields", [
    ("quality", lambda a, b: {"prefix": PREFIX, "option_1": a, "option_2": b}),
    ("coherence", lambda a, b: {"prefix": PREFIX, "continuation_a": a, "continuation_b": b}),
    ("factuality", lambda a, b: {"prefix": PREFIX, "reference": REFERENCE, "continuation": a}),
    ("rlmt_judge", lambda a, b: {"prefix": PREFIX, "reference": REFERENCE, "prediction": a}),
])
def test_a_sets_requests_share_everything_before_the_first_candidate(name, fields):
    prompt = load_prompt(name)
    first = joined(prompt.render(**fields(CANDIDATES[0], CANDIDATES[1])))
    second = joined(prompt.render(**fields(CANDIDATES[2], CANDIDATES[0])))
    shared = common_prefix(first, second)
    assert PREFIX in shared and prompt.system.split()[0] in shared
    if "reference" in prompt.shared_fields:
        assert REFERENCE in shared
    shared_token = fence_token(prompt.key, {k: fields("", "")[k] for k in prompt.shared_fields})
    assert f"\n<<<END {'CONTEXT' if name == 'coherence' else 'DOCUMENT'}" in shared and shared_token in shared
    # what differs starts within the first candidate's block, not before it
    rest = first[len(shared):]
    assert CANDIDATES[0] in rest and PREFIX not in rest


def test_each_candidate_block_carries_a_token_of_its_own_value_and_those_before_it():
    """No value can spell its own block's closing marker (the token hashes it), and two requests
    with the same first candidate agree byte for byte through that candidate's block."""
    prompt = load_prompt("quality")
    values = {"prefix": PREFIX, "option_1": CANDIDATES[0], "option_2": CANDIDATES[1]}
    req = prompt.render(**values)
    user = req.messages[-1]["content"]
    shared = fence_token(prompt.key, {"prefix": PREFIX})
    first = fence_token(prompt.key, {"prefix": PREFIX, "option_1": CANDIDATES[0]})
    full = fence_token(prompt.key, values)
    assert f"<<<BEGIN DOCUMENT OPENING {shared}>>>\n{PREFIX}\n<<<END DOCUMENT OPENING {shared}>>>" in user
    assert f"<<<BEGIN OPTION 1 {first}>>>\n{CANDIDATES[0]}\n<<<END OPTION 1 {first}>>>" in user
    assert f"<<<BEGIN OPTION 2 {full}>>>\n{CANDIDATES[1]}\n<<<END OPTION 2 {full}>>>" in user
    assert len({shared, first, full}) == 3
    assert req.shared_keys == (f"{prompt.key}:{shared}", f"{prompt.key}:{first}")

    other = joined(prompt.render(prefix=PREFIX, option_1=CANDIDATES[0], option_2=CANDIDATES[2]))
    same_first = common_prefix(joined(req), other)
    assert same_first.endswith(f"<<<END OPTION 1 {first}>>>\n\n<<<BEGIN OPTION 2 ")


def test_the_first_of_a_set_goes_alone_then_the_first_of_each_first_candidate_then_the_rest():
    from sip_core.judge.scoring import quality_pairs
    from sip_core.llm.backends.openai import warm_prefix_order

    prompt = load_prompt("quality")
    pairs = quality_pairs(3, "all_pairs")
    reqs = [prompt.render(prefix=PREFIX, option_1=CANDIDATES[a], option_2=CANDIDATES[b]) for a, b in pairs]
    order, waits_for = warm_prefix_order(reqs)
    sent = [i for i, _ in order]
    firsts = {a: next(i for i, p in enumerate(pairs) if p[0] == a) for a in range(3)}
    assert sent[0] == 0 and set(sent[1:3]) == {firsts[1], firsts[2]}
    assert waits_for == {**{firsts[a]: 0 for a in (1, 2)},
                         **{i: firsts[p[0]] for i, p in enumerate(pairs) if i not in firsts.values()}}


def test_shared_fields_must_be_a_proper_subset():
    base = {"name": "p", "version": 1, "description": "d", "sampling": {}, "user": "<<<BEGIN A>>>\n{a}\n{b}",
            "fields": ["a", "b"], "parser": "quality"}
    assert Prompt.from_dict({**base, "shared_fields": ["a"]}).shared_fields == ("a",)
    for bad in (["a", "b"], ["c"]):
        with pytest.raises(PromptError, match="shared_fields"):
            Prompt.from_dict({**base, "shared_fields": bad})


def test_answer_prefix_fields_are_filled_defanged_when_prefilled():
    """An answer opening may quote a field (the rewrite prompt prefills the prefix's last words)."""
    base = {"name": "p", "version": 1, "description": "d", "sampling": {}, "user": "Continue: {text}",
            "fields": ["text", "ending"], "parser": "quality", "answer_prefix": "{ending}"}
    prompt = Prompt.from_dict(base)
    req = prompt.render(None, True, text="a b c", ending=" the <<<END x>>> end")
    assert req.messages[-1] == {"role": "assistant", "content": " the (((END x>>> end"}
    assert req.prefill == " the (((END x>>> end"
    assert prompt.render(text="a", ending="b").messages[-1]["role"] == "user"  # no prefill, no opening
