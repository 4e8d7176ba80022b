"""Reading config files: YAML trees with `extends:`, then overrides, then validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sip_core.config.tree import ConfigError, SipConfig, parse_override, set_dotted


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_config_tree(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config file as a tree. `extends: other.yaml` (relative to this file) starts from
    that file's tree; this file's keys override it section by section, key by key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"config file {path} extends itself")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if not isinstance(parent, str):
        raise ConfigError(f"config file {path}: extends must be a file name, got {parent!r}")
    return _merge(read_config_tree(path.parent / parent, (*_seen, path.resolve())), tree)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> SipConfig:
    tree: dict[str, Any] = read_config_tree(path) if path is not None else {}
    for item in overrides:
        try:
            key, value = parse_override(item)
        except yaml.YAMLError as exc:  # e.g. data.source=[unclosed: quote it, or fix the value
            where = str(exc).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value is not YAML ({where}); quote it if it is text") from None
        set_dotted(tree, key, value)
    try:
        return SipConfig.model_validate(tree)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        what = "unknown config key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{what}: {where or 'config'}" + (f" (from {path})" if path else "")) from None
