"""A training plan: the fingerprint of a training split and the rules' choices, as a config.

`make_plan` runs the rules (`planning.rules`) on a fingerprint; `plan_data` reads the training
split a data section names and plans for it. A `Plan` gives its values as a config tree (the
layer under a recipe's keys and the command line's overrides), as rows to print, as the record a
run keeps (`Config.plan`), and as a YAML recipe that `-c plan.yaml` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from rcnnlab.config import DataConfig, PlanRecord, deep_merge, set_key
from rcnnlab.data.coco import require_boxes
from rcnnlab.data.fingerprint import Fingerprint, fingerprint
from rcnnlab.data.splits import load_splits, with_synth_paths, with_yolo_paths
from rcnnlab.planning.hardware import Hardware
from rcnnlab.planning.rules import RULES, Choice, Context


@dataclass
class Plan:
    """What the planner chose for one training split on one machine."""

    fingerprint: Fingerprint
    hardware: Hardware
    budget_minutes: float | None
    choices: list[Choice]

    @property
    def values(self) -> dict[str, Any]:
        """Every planned key (dotted) and its value."""
        return {k: v for choice in self.choices for k, v in choice.values.items()}

    def choice(self, topic: str) -> Choice:
        """The choice of one topic ("input scale", "anchors", ...)."""
        return next(c for c in self.choices if c.topic == topic)

    def tree(self) -> dict[str, Any]:
        """The planned values as a config tree, the plan's record included."""
        tree: dict[str, Any] = {}
        for key, value in self.values.items():
            set_key(tree, key, value)
        tree["plan"] = self.record().model_dump()
        return tree

    def record(self) -> PlanRecord:
        """What a run keeps of its plan: the data, the machine, the fingerprint, each choice's
        keys and reason."""
        return PlanRecord(data=self.fingerprint.source, device=self.hardware.device,
                          machine=self.hardware.name, budget_minutes=self.budget_minutes,
                          fingerprint=self.fingerprint.as_dict(),
                          choices=[{"topic": c.topic, "values": dict(c.values),
                                    "reason": c.reason} for c in self.choices])

    def rows(self) -> list[tuple[str, str, str]]:
        """(topic, its values as `key=value` text, reason) per choice."""
        return self.record().rows()

    def to_yaml(self, on_top: dict[str, Any] | None = None) -> str:
        """A recipe of the plan, each choice's reason as a comment; `on_top` (a config tree:
        the data it was made for, the command line's overrides) wins key by key, so that
        `-c plan.yaml` needs nothing else."""
        tree = deep_merge(self.tree(), on_top or {})
        lines = [f"# rcnnlab plan for {self.fingerprint.source}",
                 f"# on {self.hardware.device} ({self.hardware.name})"
                 + (f", {self.budget_minutes:g} minutes" if self.budget_minutes else ""),
                 "# train it with: rcnnlab train -c THIS_FILE [key=value ...]", "#"]
        for topic, values, reason in self.rows():
            lines += [f"# {topic}: {reason}", f"#   {values}"]
        order = ["name", "out_dir", "data", "model", "augment", "train", "eval", "plan"]
        order += sorted(set(tree) - set(order))  # a section added later goes last
        body = yaml.safe_dump({k: tree[k] for k in order if k in tree},
                              sort_keys=False, width=100, default_flow_style=None)
        return "\n".join(lines) + "\n" + body


def make_plan(fp: Fingerprint, hardware: Hardware, *, budget_minutes: float | None = None,
              has_valid: bool = True) -> Plan:
    """Run the rules on a fingerprint for a machine (and a time budget in minutes)."""
    ctx = Context(fp, hardware, budget_minutes=budget_minutes, has_valid=has_valid)
    return Plan(fp, hardware, budget_minutes, [ctx.take(rule(ctx)) for rule in RULES])


def plan_data(data: DataConfig, *, device: str = "auto",
              budget_minutes: float | None = None) -> Plan:
    """Read the training split `data` names (image headers and boxes only) and plan for it."""
    resolved = with_yolo_paths(with_synth_paths(data))
    train = load_splits(data, need=("train",))["train"]
    require_boxes(train, "training")
    has_valid = resolved.valid_json is not None or data.val_fraction > 0
    return make_plan(fingerprint(train), Hardware.of(device), budget_minutes=budget_minutes,
                     has_valid=has_valid)
