"""Prompt templates: load a YAML file from `sip_core/prompts/`, render it into an `LLMRequest`.

    req = load_prompt("quality").render(prefix=p, option_1=a, option_2=b,
                                        sampling_override={"temperature": 0.7, "seed": 3})

`req.prompt` is the template's key "name@version" (part of every cache key), `req.inputs` the
fields as given (the offline proxy judge reads them instead of the rendered text), and
`req.sampling` the file's defaults merged with the overrides.

Placeholders are `{field}` with an identifier inside; any other brace text (a JSON example such as
`{"score": 1}`) is literal, so templates need no brace escaping. Rendering is one pass: braces in
a field value are never expanded.

Field values are fenced by `<<<BEGIN X>>>` / `<<<END X>>>` markers in the templates. Two things
keep a document from closing its own block and talking to the judge as instructions:
- every marker carries a token derived from the request's own field values (`<<<END X 3f9a…>>>`),
  which a document cannot contain (it would have to hold a hash of itself); the token is a
  function of the request, so the judgment cache still recognises a repeated request;
- runs that read as a marker opening are defanged in field values: three or more "<", counting
  look-alikes (fullwidth, small-form, `‹ « 〈 ⟨ ❮`, `≪` as two, `⋘` as three, `&lt;` and numeric
  entities), with zero-width or format characters and single spaces hidden between them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sip_core.llm.types import LLMRequest, Sampling
from sip_core.prompts import PROMPTS_DIR

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# One "<" to a reader: ASCII, fullwidth, small-form, angle quotes and brackets, HTML entities;
# "≪" counts as two and "⋘" as three. Invisible characters and single spaces may sit between them.
_ANGLE_UNIT = r"(?:[<\uFF1C\uFE64\u2039\u00AB\u2329\u27E8\u3008\u276E\u226A\u22D8]|&(?:lt|#0*60|#x0*3c);)"
_HIDDEN = r"[\s\u00AD\u180E\u200B-\u200F\u202A-\u202E\u2060-\u2064\uFEFF]?"
_ANGLE_RUN = re.compile(rf"{_ANGLE_UNIT}(?:{_HIDDEN}{_ANGLE_UNIT})*", re.IGNORECASE)
_ANGLE_WEIGHT = {"\u226A": 2, "\u22D8": 3}
DEFANGED = "("  # what each "<" of a defanged run becomes: nothing angle-like is left to read as a marker
# A template's own markers: labels in capitals (the system text's "<<<BEGIN ...>>>" is prose).
_TEMPLATE_MARKER = re.compile(r"<<<(BEGIN|END) ([A-Z0-9 ]+)>>>")
_SAMPLING_KEYS = {f.name for f in dataclasses.fields(Sampling)}
_FILE_KEYS = {"name", "version", "description", "sampling", "system", "user", "fields", "parser", "choices",
              "answer_prefix", "shared_fields"}
_REQUIRED_KEYS = {"name", "version", "description", "sampling", "user", "fields", "parser"}


class PromptError(ValueError):
    """A prompt file is malformed, or a render call got wrong fields."""


def _angle_count(run: str) -> int:
    units = re.findall(_ANGLE_UNIT, run, flags=re.IGNORECASE)
    return sum(_ANGLE_WEIGHT.get(u, 1) for u in units)


def defang(value: str) -> str:
    """Replace every run that reads as 3+ "<" (look-alikes, entities and hidden characters
    included) by as many "(": a field value can then hold no `<<<BEGIN ...>>>` / `<<<END ...>>>`
    marker, however it is spelled. Runs of one or two "<" stay as they are."""
    def replace(m: re.Match) -> str:
        n = _angle_count(m.group(0))
        return DEFANGED * n if n >= 3 else m.group(0)

    return _ANGLE_RUN.sub(replace, value)


def fence_token(prompt_key: str, values: Mapping[str, str]) -> str:
    """The token this request's markers carry: a hash of the prompt and its (defanged) field
    values, so a value can never spell its own block's closing marker."""
    payload = "\x00".join([prompt_key, *(f"{k}={values[k]}" for k in sorted(values))])
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def fence(template: str, token: str) -> str:
    return _TEMPLATE_MARKER.sub(lambda m: f"<<<{m.group(1)} {m.group(2)} {token}>>>", template)


def fence_shared(template: str, shared: Sequence[str], order: Sequence[str], tokens: Sequence[str]) -> str:
    """`fence` for a prompt whose leading blocks hold only fields shared by a candidate set. The
    markers up to the block of the first other field carry `tokens[0]` (a hash of the shared
    values); from each other field's block on, the next token (a hash of the shared values and
    the fields up to that one, `order` being the other fields as the template places them). Each
    block's token still hashes its own value, so no value spells its own closing marker, and two
    requests that agree up to a field agree byte for byte up to there: the set's requests share
    their opening, and those with the same first candidate share that too, in a prefix cache."""
    cuts = [0]
    for name in order:
        place = min(m.start() for m in _PLACEHOLDER.finditer(template) if m.group(1) == name)
        before = list(_TEMPLATE_MARKER.finditer(template, cuts[-1], place))
        cuts.append(before[-1].start() if before and before[-1].group(1) == "BEGIN" else place)
    cuts.append(len(template))
    return "".join(fence(template[a:b], tok) for a, b, tok in zip(cuts, cuts[1:], tokens))


def last_words(text: str, n: int = 5) -> str:
    """The tail of `text` from the start of its n-th last whitespace-separated word, trailing
    space included, so that `text[:-len(tail)] + tail == text` (P5's `prefix_ending`)."""
    starts = [m.start() for m in re.finditer(r"\S+", text)]
    if not starts:
        return text
    return text[starts[max(0, len(starts) - n)]:]


def _sampling_from(mapping: Mapping[str, Any], base: Sampling, where: str) -> Sampling:
    unknown = set(mapping) - _SAMPLING_KEYS
    if unknown:
        raise PromptError(f"{where}: unknown sampling key {sorted(unknown)[0]!r}; "
                          f"known: {', '.join(sorted(_SAMPLING_KEYS))}")
    values = dict(mapping)
    stop = values.get("stop")
    if stop is not None:
        values["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
    return base.override(values)


@dataclass(frozen=True)
class Prompt:
    name: str
    version: int
    description: str
    user: str
    fields: tuple[str, ...]
    parser: str
    sampling: Sampling = Sampling()
    system: str | None = None
    choices: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Start of the answer in the required format. With `prefill`, it is sent as the opening of the
    # assistant's reply, so a weak judge only has to pick (servers that continue a final assistant
    # message: vLLM, the local backend); backends put it back in front of the text they return.
    answer_prefix: str | None = None
    path: str | None = None
    # Fields every request of one candidate set shares (the document prefix, the reference), placed
    # ahead of the candidates in the template: their blocks' markers are fenced with a token of
    # their values alone (`fence_shared`), so the set's prompts share that whole prefix.
    shared_fields: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str | None = None) -> Prompt:
        where = path or "prompt"
        if not isinstance(data, Mapping):
            raise PromptError(f"{where}: a prompt file must hold a mapping")
        unknown = set(data) - _FILE_KEYS
        if unknown:
            raise PromptError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        missing = _REQUIRED_KEYS - set(data)
        if missing:
            raise PromptError(f"{where}: missing key {sorted(missing)[0]!r}")
        version = data["version"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise PromptError(f"{where}: version must be an integer")
        fields = tuple(data["fields"] or ())
        if len(set(fields)) != len(fields) or not all(isinstance(f, str) and f.isidentifier() for f in fields):
            raise PromptError(f"{where}: fields must be distinct identifiers")
        choices = {k: dict(v) for k, v in (data.get("choices") or {}).items()}
        for name in choices:
            if name not in fields:
                raise PromptError(f"{where}: choices for {name!r}, which is not a field")
        templates = [data["user"]] + [data[k] for k in ("system", "answer_prefix") if data.get(k)]
        used = {m.group(1) for t in templates for m in _PLACEHOLDER.finditer(t)}
        undeclared = sorted(used - set(fields))
        if undeclared:
            raise PromptError(f"{where}: placeholder {{{undeclared[0]}}} is not a declared field")
        for name in fields:
            if name not in used:
                raise PromptError(f"{where}: field {name!r} is never used in the template")
        shared_fields = tuple(data.get("shared_fields") or ())
        if not set(shared_fields) < set(fields):
            raise PromptError(f"{where}: shared_fields must be some, not all, of the fields")
        from sip_core.llm.parsers import PARSERS

        if data["parser"] not in PARSERS:
            raise PromptError(f"{where}: unknown parser {data['parser']!r}")
        sampling = _sampling_from(data.get("sampling") or {}, Sampling(), where)
        return cls(name=str(data["name"]), version=version, description=str(data["description"]).strip(),
                   user=data["user"], fields=fields, parser=data["parser"], sampling=sampling,
                   system=data.get("system") or None, choices=choices,
                   answer_prefix=data.get("answer_prefix") or None, path=path, shared_fields=shared_fields)

    @classmethod
    def from_file(cls, path: str | Path) -> Prompt:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise PromptError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        prompt = cls.from_dict(data, str(path))
        if prompt.name != path.stem:
            raise PromptError(f"{path}: name {prompt.name!r} differs from the file name")
        return prompt

    def _value(self, name: str, value: Any) -> str:
        if name in self.choices:
            options = self.choices[name]
            if value not in options:
                raise PromptError(f"{self.key}: field {name!r} must be one of {', '.join(options)}; got {value!r}")
            return options[value].strip()
        if value is None:
            raise PromptError(f"{self.key}: field {name!r} is None")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise PromptError(f"{self.key}: field {name!r} must be text or a number, got {type(value).__name__}")
        return defang(str(value))

    def render(self, sampling_override: Mapping[str, Any] | None = None, prefill: bool = False,
               **fields: Any) -> LLMRequest:
        """The request for these field values. Missing or unexpected fields raise PromptError
        (a ValueError) naming the field; `sampling_override` keys are Sampling's (temperature,
        top_p, max_tokens, seed, stop), None values leave the file's default."""
        for name in self.fields:
            if name not in fields:
                raise PromptError(f"{self.key}: missing field {name!r}")
        for name in fields:
            if name not in self.fields:
                raise PromptError(f"{self.key}: unexpected field {name!r}; expected {', '.join(self.fields)}")
        values = {name: self._value(name, fields[name]) for name in self.fields}
        token = fence_token(self.key, values)
        order = self._unshared_order()
        # tokens[0]: the shared values; then each further field's values added in template order
        tokens = [fence_token(self.key, {k: values[k] for k in [*self.shared_fields, *order[:n]]})
                  for n in range(len(order) + 1)] if self.shared_fields else []

        def fill(template: str) -> str:
            # before filling: a value's text is never taken for a marker
            present = [n for n in order if "{" + n + "}" in template]
            fenced = (fence_shared(template, self.shared_fields, present, tokens[:1] + [tokens[order.index(n) + 1]
                                                                                      for n in present])
                      if self.shared_fields else fence(template, token))
            return _PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), fenced)

        messages = []
        if self.system:
            messages.append({"role": "system", "content": fill(self.system)})
        messages.append({"role": "user", "content": fill(self.user)})
        if prefill and self.answer_prefix:  # its {field}s filled too (e.g. the rewrite's prefix ending)
            opening = _PLACEHOLDER.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0),
                                       self.answer_prefix)
            messages.append({"role": "assistant", "content": opening})
        sampling = _sampling_from(sampling_override or {}, self.sampling, f"{self.key} sampling_override")
        return LLMRequest(messages=tuple(messages), sampling=sampling, prompt=self.key, inputs=dict(fields),
                          shared_keys=tuple(f"{self.key}:{t}" for t in tokens[:-1]))

    def _unshared_order(self) -> list[str]:
        """The fields not shared by a candidate set, in the order the system and user text place them."""
        seen: list[str] = []
        for m in _PLACEHOLDER.finditer((self.system or "") + "\n" + self.user):
            if m.group(1) in self.fields and m.group(1) not in self.shared_fields and m.group(1) not in seen:
                seen.append(m.group(1))
        return seen + [f for f in self.fields if f not in seen and f not in self.shared_fields]


@functools.lru_cache(maxsize=None)
def _load(name: str) -> Prompt:
    path = PROMPTS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml")))
        raise PromptError(f"no prompt named {name!r}; known: {known}")
    return Prompt.from_file(path)


def load_prompt(name: str) -> Prompt:
    """The bundled prompt `name` (cached). "name@version" is accepted and the version checked."""
    base, _, version = name.partition("@")
    if not base.isidentifier():
        raise PromptError(f"bad prompt name {name!r}")
    prompt = _load(base)
    if version and version != str(prompt.version):
        raise PromptError(f"prompt {base!r} is at version {prompt.version}, not {version}")
    return prompt
