"""Typed run configuration: YAML files with `base:` inheritance plus dotted CLI overrides.

A config is a tree of pydantic models, one section per stage of the pipeline
(data -> model -> train -> evaluation/predict). Each stage reads only its own section.
Unknown keys are errors, so a typo in a YAML file or an override never passes silently.

Everything is imported from here (``from rcnnlab.config import Config, load_config``); the
modules hold: ``sections`` the stages' sections (data, model, augment, train), ``run`` the
whole :class:`Config` with its evaluation section and plan record and the validation messages,
``tree`` the plain dict trees and overrides, ``loading`` the recipes, YAML files and
``base:`` chains.
"""

from rcnnlab.config.loading import (
    BUILTIN_CONFIGS,
    PLAN_BASE,
    builtin_configs,
    config_from_dict,
    config_of,
    config_path,
    load_config,
    read_recipe,
    read_yaml_tree,
)
from rcnnlab.config.run import (
    Config,
    EvalConfig,
    PlanRecord,
    check_threshold,
    config_keys,
    problems,
    section_with,
)
from rcnnlab.config.sections import (
    ARCHS,
    RENAMED_TRAIN_KEYS,
    AmpMode,
    AugmentConfig,
    DataConfig,
    ModelConfig,
    SynthConfig,
    TrainConfig,
)
from rcnnlab.config.tree import apply_overrides, deep_merge, set_key, value_text
from rcnnlab.errors import ConfigError

__all__ = [
    "ARCHS",
    "BUILTIN_CONFIGS",
    "PLAN_BASE",
    "RENAMED_TRAIN_KEYS",
    "AmpMode",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "PlanRecord",
    "SynthConfig",
    "TrainConfig",
    "apply_overrides",
    "builtin_configs",
    "check_threshold",
    "config_from_dict",
    "config_keys",
    "config_of",
    "config_path",
    "deep_merge",
    "load_config",
    "problems",
    "read_recipe",
    "read_yaml_tree",
    "section_with",
    "set_key",
    "value_text",
]
