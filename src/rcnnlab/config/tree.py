"""Config trees: the plain nested dicts that YAML files and dotted overrides (`train.lr=0.01`)
make before they are validated into a Config, and a value written as on the command line."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from rcnnlab.errors import ConfigError

__all__ = ["apply_overrides", "deep_merge", "set_key", "value_text"]


def value_text(value: Any) -> str:
    """A config value as it is written on the command line (`null`, `true`, `[8, 16]`)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def deep_merge(base: dict, override: dict) -> dict:
    """Return `base` updated recursively by `override` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_key(tree: dict, key: str, value: Any) -> None:
    """Set the dotted `key` (`train.lr`) of a config tree to `value`, making sections as
    needed."""
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` overrides; the value is parsed as YAML (`3`, `true`, `[1, 2]`, `null`)."""
    tree = copy.deepcopy(tree)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value, e.g. train.epochs=3")
        key, raw = item.split("=", 1)
        if not all(part.strip() for part in key.split(".")):
            raise ConfigError(f"override {item!r}: no key before '=' (or an empty part in it). "
                              "Fix: write key.path=value, e.g. train.epochs=3")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from None
        try:
            set_key(tree, key, value)
        except ConfigError as exc:
            raise ConfigError(f"override {item!r}: {exc}") from None
    return tree
