"""Loading a config: the shipped recipes found by name, YAML files read with their `base:`
chains, dotted overrides on top, and the result validated into a Config (also a saved one, from
a checkpoint or a run folder, with the keys renamed since)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rcnnlab.config.run import Config, problems
from rcnnlab.config.tree import apply_overrides, deep_merge, value_text
from rcnnlab.errors import ConfigError

__all__ = ["BUILTIN_CONFIGS", "PLAN_BASE", "builtin_configs", "config_from_dict", "config_of",
           "config_path", "load_config", "read_recipe", "read_yaml_tree"]

# The recipes shipped in the package (rcnnlab/configs/, beside this config package): `-c orand`
# finds configs/orand.yaml there.
BUILTIN_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def builtin_configs() -> dict[str, tuple[Path, str]]:
    """The built-in recipes: name -> (file, the first line of its leading comment)."""
    out = {}
    for path in sorted(BUILTIN_CONFIGS.glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        out[path.stem] = (path, first.lstrip("#").strip() if first.startswith("#") else "")
    return out


def config_path(name: str | Path) -> Path:
    """A config file: `name` itself when it is a file, else the built-in recipe of that name
    (`orand`, `orand.yaml`); a ConfigError lists the recipes when it is neither."""
    path = Path(name)
    if path.is_file():
        return path
    builtin = BUILTIN_CONFIGS / (path.name if path.suffix in (".yaml", ".yml")
                                 else f"{path.name}.yaml")
    if len(path.parts) <= 1 and builtin.is_file():
        return builtin
    if len(path.parts) > 1 and path.parts[0] == "configs" and builtin.is_file():
        return builtin  # the repo's old configs/ folder: the recipes moved into the package
    raise ConfigError(f"{name}: config file not found. Fix: give a path to a YAML file, or "
                      f"one of the built-in recipes: {', '.join(builtin_configs())} "
                      "(rcnnlab configs lists them)")


# `base: plan` in a recipe: its keys apply on top of the plan for its data
PLAN_BASE = "plan"


def read_recipe(path: str | Path | None) -> tuple[dict, bool]:
    """A recipe's tree (its `base:` chain resolved) and whether the chain starts from the plan
    (`base: plan`); no recipe is the plan with nothing on top."""
    if path is None:
        return {}, True
    planned: list[bool] = []
    tree = read_yaml_tree(config_path(path), _planned=planned)
    return tree, bool(planned)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last
    silently, so one of the two settings would be lost without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "in a mapping", node.start_mark, f"the key {key!r} is given twice",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml_tree(path: str | Path, _seen: tuple[Path, ...] = (),
                   _planned: list[bool] | None = None) -> dict:
    """Read a YAML config, resolving its `base:` chain (paths relative to the file). A chain
    that ends at `base: plan` appends True to `_planned` (see `read_recipe`)."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(map(str, _seen))
        raise ConfigError(f"{path}: `base:` chain loops back to itself ({chain})")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (a `base:` names a file relative to "
                          "the config that names it)")
    try:
        tree = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file. Fix: save the config as UTF-8 "
                          "text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, "
                          f"got {type(tree).__name__}")
    base = tree.pop("base", None)
    if base == PLAN_BASE:
        if _planned is None:
            raise ConfigError(f"{path}: starts from the plan for its data (base: plan). Fix: "
                              "load it with rcnnlab.api.configure (the CLI does), or name a "
                              "recipe file as its base")
        _planned.append(True)
        return tree
    if base is None:
        return tree
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: {value_text(base)} is not a file name. Fix: base: "
                          "other.yaml (relative to this file), a recipe name, or plan")
    return deep_merge(read_yaml_tree(path.parent / base, _seen + (path,), _planned), tree)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a validated Config from an optional YAML file (or built-in recipe name: `orand`,
    `demo`, `base`) and dotted overrides. Nothing is planned: without a file the defaults of
    `Config` apply (`rcnnlab.api.configure` plans)."""
    tree = read_yaml_tree(config_path(path)) if path is not None else {}
    return config_of(tree, overrides, str(path) if path is not None else "config")


def config_of(tree: dict, overrides: list[str] | None = None, where: str = "config") -> Config:
    """A validated Config from a config tree with dotted overrides on top; `where` names the
    source in the error message."""
    tree = apply_overrides(tree, overrides or [])
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{where}: invalid config: {problems(exc)}") from None


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a Config from its saved form (checkpoints, run folders), including forms saved
    before a key was renamed."""
    train = dict(tree.get("train") or {})
    if "objective" in train or "cls_loss" in train:
        objective, cls_loss = train.pop("objective", "standard"), train.pop("cls_loss", "ce")
        train["roi_loss"] = "policy_gradient" if objective == "policy_gradient" else cls_loss
        tree = {**tree, "train": train}
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"a saved config (config.yaml or a checkpoint's) is not valid: "
                          f"{problems(exc)}. Fix: train the run again with this version") from None
