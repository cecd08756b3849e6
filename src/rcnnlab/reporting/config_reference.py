"""The configuration reference, from one source: every key of `rcnnlab.config`, its value without
a recipe (`Config()`), whether the plan sets it (`rcnnlab train` without `-c`), what the
`-c base` and `-c orand` recipes set, and its meaning (the comments on the key in the config's
source).

    python -m rcnnlab.reporting.config_reference                  # print the Markdown tables
    python -m rcnnlab.reporting.config_reference --write FILE     # replace them in FILE

The documentation's configuration page (docs/configuration.md) holds the markers
`<!-- config-reference --><!-- /config-reference -->`; the site's build hook (docs/hooks.py)
fills them with `markdown()` every time the site is built, so the reference cannot drift from
the code.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo

from rcnnlab.config import Config, config_keys, load_config, value_text
from rcnnlab.planning.rules import PLANNED_KEYS

START, END = "<!-- config-reference -->", "<!-- /config-reference -->"
RECIPES = ("base", "orand")
# the section each config class holds, by class name
SECTIONS = {"Config": "", "DataConfig": "data.", "SynthConfig": "data.synth.",
            "ModelConfig": "model.", "AugmentConfig": "augment.", "TrainConfig": "train.",
            "EvalConfig": "eval.", "PlanRecord": "plan."}
TITLES = {"": "run", "data.": "data", "model.": "model", "augment.": "augment",
          "train.": "train", "eval.": "eval"}


@dataclass(frozen=True)
class Entry:
    """One key of the reference."""

    key: str
    default: str  # `Config()`'s value, as written on the command line
    valid: str  # its range or choices (`valid_values`), "" where any value of its type goes
    planned: bool  # `rcnnlab train` without -c sets it from the plan
    recipes: dict[str, str]  # recipe -> its value where it differs from the default, else ""
    meaning: str


def field_comments() -> dict[str, str]:
    """Each field's comments in the config's source, by dotted key: the comment lines right
    above it and the one at the end of its line. Read from each config class's own source, so
    it works wherever the classes are defined."""
    out: dict[str, str] = {}
    for cls, prefix in _config_classes():
        source = inspect.getsource(cls)
        comments: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
        lines = source.splitlines()
        node = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef))
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            above, row = [], item.lineno - 1
            while row >= 1 and lines[row - 1].strip().startswith("#"):
                above.insert(0, comments[row])
                row -= 1
            if above and above[0].startswith("---"):  # a group banner, not this key's
                above = []
            text = " ".join([*above, *([comments[item.end_lineno]]
                                       if item.end_lineno in comments else [])])
            out[prefix + item.target.id] = text
    return out


def _bounds(metadata) -> str:
    """"> 0", "0-1", ">= 32", "0 to < 1" from annotated-types constraints."""
    low = high = ""
    for item in metadata:
        for attr, side, sign in (("gt", "low", ">"), ("ge", "low", ">="), ("lt", "high", "<"),
                                 ("le", "high", "<=")):
            bound = getattr(item, attr, None)
            if bound is not None:
                text = f"{sign} {bound:g}"
                low, high = (text, high) if side == "low" else (low, text)
    if low and high:
        closed = low.startswith(">=") and high.startswith("<=")
        lo, hi = low.split()[1], high.split()[1]
        return f"{lo}-{hi}" if closed else f"{low}, {high}"
    return low or high


def valid_values(field) -> str:
    """A field's valid values as the reference prints them: its range ("> 0", "0-1"), its
    choices ("adamw / sgd"), "each > 0" for a list, "or null" where null is allowed."""
    parts, nullable = [], False

    def walk(annotation, metadata=()) -> None:
        nonlocal nullable
        origin, args = get_origin(annotation), get_args(annotation)
        if annotation is type(None):
            nullable = True
        elif origin is Annotated:
            walk(args[0], [*metadata, *args[1:]])
        elif origin in (Union, UnionType):
            for arg in args:
                walk(arg, metadata)
        elif origin is Literal:
            parts.append(" / ".join(str(a) for a in args))
        elif origin is list and args:
            inner = valid_values(FieldInfo.from_annotation(args[0]))
            parts.append(f"list, each {inner}" if inner else "list")
        else:
            metadata = [*metadata, *getattr(annotation, "metadata", ())]
            if isinstance(annotation, FieldInfo):
                metadata = [*metadata, *annotation.metadata]
            bounds = _bounds(metadata)
            if bounds:
                parts.append(bounds)

    walk(field.annotation, field.metadata)
    text = "; ".join(dict.fromkeys(parts))
    return f"{text}, or null" if nullable and text else text


def _cell(value) -> str:
    text = value_text(value).strip("'")  # off, not 'off': the command line takes it bare
    return text if len(text) <= 40 else text[:37] + "..."


def entries() -> list[Entry]:
    """Every leaf key of the config (the `plan` record as one key), in the config's order."""
    defaults = Config()
    recipes = {name: load_config(name) for name in RECIPES}
    meanings = field_comments()
    fields = {prefix + name: field for cls, prefix in _config_classes()
              for name, field in cls.model_fields.items()}
    keys = [k for k in config_keys() if not k.startswith("plan.")]
    sections = {k.rstrip(".") for k in SECTIONS.values() if k} - {"plan"}
    out = []
    for key in keys:
        if key in sections:
            continue
        if key == "plan":
            out.append(Entry(key, "null", "", False, dict.fromkeys(RECIPES, ""), meanings[key]))
            continue
        default = defaults.value(key) if not key.startswith("data.synth.") else None
        if key.startswith("data.synth."):  # a section that is null without a recipe
            default_text = "-"
            values = {n: (_cell(r.value(key)) if r.data.synth else "") for n, r in
                      recipes.items()}
        else:
            default_text = _cell(default)
            values = {n: (_cell(r.value(key)) if r.value(key) != default else "")
                      for n, r in recipes.items()}
        out.append(Entry(key, default_text, valid_values(fields[key]), key in PLANNED_KEYS,
                         values, meanings.get(key, "")))
    return out


def _config_classes():
    """Each config class with its dotted prefix ("train."), found from `Config`'s fields."""
    classes = {cls.__name__: cls for cls in (Config, *_nested(Config))}
    return [(classes[name], prefix) for name, prefix in SECTIONS.items() if name in classes]


def _nested(cls) -> list:
    out = []
    for field in cls.model_fields.values():
        for arg in (field.annotation, *get_args(field.annotation)):
            if isinstance(arg, type) and hasattr(arg, "model_fields") and arg not in out:
                out += [arg, *_nested(arg)]
    return out


def markdown() -> str:
    """The reference as Markdown: one table per section."""
    parts = ["Values are written as on the command line. **plan**: without `-c`, `rcnnlab "
             "train` sets the key from the plan for the data (`rcnnlab plan DATA` shows the "
             "value and why); `Config()` and recipes that do not start from the plan keep the "
             "value of the first column. A recipe's column is empty where it keeps that value. "
             "**valid**: the range or the choices; any other value is refused with one line "
             "naming the key, the range and the value given."]
    rows = entries()
    for prefix, title in TITLES.items():
        mine = [e for e in rows if (e.key.startswith(prefix) if prefix else "." not in e.key)]
        parts += ["", f"**{title}**", "",
                  "| key | without a recipe | valid | plan | `-c base` | `-c orand` | meaning |",
                  "|---|---|---|:---:|---|---|---|"]
        for e in mine:
            parts.append(f"| `{e.key}` | `{e.default}` | {e.valid} | "
                         f"{'plan' if e.planned else ''} | "
                         + " | ".join(f"`{v}`" if v else "" for v in e.recipes.values())
                         + f" | {e.meaning.replace('|', '/')} |")
    return "\n".join(parts) + "\n"


def replace_in(text: str) -> str:
    """`text` (a documentation page) with the tables between the markers replaced by
    `markdown()`."""
    head, start, rest = text.partition(START)
    if not start:
        raise ValueError(f"no {START} marker")
    _, end, tail = rest.partition(END)
    return f"{head}{START}\n{markdown()}{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path,
                        help="replace the tables between the markers in this file")
    args = parser.parse_args()
    if args.write is None:
        print(markdown(), end="")
        return
    args.write.write_text(replace_in(args.write.read_text()))
    print(f"written: {args.write}")


if __name__ == "__main__":
    main()
