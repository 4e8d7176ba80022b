"""Prompt templates, one YAML file per task (`<name>.yaml`), loaded by `sip_core.llm.prompting`.

Each file holds: `name`, `version` (int; bump it whenever the wording changes, since the pair
"name@version" is part of every cache key), `description`, `sampling` (default temperature, top_p,
max_tokens), an optional `system` message, the `user` template with `{field}` placeholders, the
list of `fields`, the `parser` name (see `sip_core.llm.parsers`) and, optionally, `choices`: for a
field listed there the caller passes a key and the template receives that key's text.

All prompt wording is our own paraphrase of the method's prompts (METHOD.md section 3); only the
output formats are the method's. Data fields are always fenced by `<<<BEGIN X>>>` / `<<<END X>>>`
markers, and rendering defangs any marker-like text inside field values.
"""

from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent


def prompt_names() -> list[str]:
    """Names of the bundled prompt files, sorted."""
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))
