"""The configuration reference, from one source: every key of `rcnnlab.config`, its value without
a recipe (`Config()`), whether the plan sets it (`rcnnlab train` without `-c`), what the
`-c base` and `-c orand` recipes set, and its meaning (the comments on the key in config.py).

    python -m rcnnlab.reporting.config_reference            # print the Markdown tables
    python -m rcnnlab.reporting.config_reference --write README.md   # replace them there

The README holds the tables between `<!-- config-reference -->` markers; a test checks that they
are what this module writes, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

from rcnnlab import config as config_module
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
    planned: bool  # `rcnnlab train` without -c sets it from the plan
    recipes: dict[str, str]  # recipe -> its value where it differs from the default, else ""
    meaning: str


def field_comments() -> dict[str, str]:
    """Each field's comments in config.py, by dotted key: the comment lines right above it and
    the one at the end of its line."""
    source = inspect.getsource(config_module)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out: dict[str, str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef) or node.name not in SECTIONS:
            continue
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
            out[SECTIONS[node.name] + item.target.id] = text
    return out


def _cell(value) -> str:
    text = value_text(value).strip("'")  # off, not 'off': the command line takes it bare
    return text if len(text) <= 40 else text[:37] + "..."


def entries() -> list[Entry]:
    """Every leaf key of the config (the `plan` record as one key), in config.py's order."""
    defaults = Config()
    recipes = {name: load_config(name) for name in RECIPES}
    meanings = field_comments()
    keys = [k for k in config_keys() if not k.startswith("plan.")]
    sections = {k.rstrip(".") for k in SECTIONS.values() if k} - {"plan"}
    out = []
    for key in keys:
        if key in sections:
            continue
        if key == "plan":
            out.append(Entry(key, "null", False, dict.fromkeys(RECIPES, ""), meanings[key]))
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
        out.append(Entry(key, default_text, key in PLANNED_KEYS, values, meanings.get(key, "")))
    return out


def markdown() -> str:
    """The reference as Markdown: one table per section."""
    parts = ["Values are written as on the command line. **plan**: without `-c`, `rcnnlab "
             "train` sets the key from the plan for the data (`rcnnlab plan DATA` shows the "
             "value and why); `Config()` and recipes that do not start from the plan keep the "
             "value of the first column. A recipe's column is empty where it keeps that value."]
    rows = entries()
    for prefix, title in TITLES.items():
        mine = [e for e in rows if (e.key.startswith(prefix) if prefix else "." not in e.key)]
        parts += ["", f"**{title}**", "",
                  "| key | without a recipe | plan | `-c base` | `-c orand` | meaning |",
                  "|---|---|:---:|---|---|---|"]
        for e in mine:
            parts.append(f"| `{e.key}` | `{e.default}` | {'plan' if e.planned else ''} | "
                         + " | ".join(f"`{v}`" if v else "" for v in e.recipes.values())
                         + f" | {e.meaning.replace('|', '/')} |")
    return "\n".join(parts) + "\n"


def replace_in(text: str) -> str:
    """`text` (a README) with the tables between the markers replaced by `markdown()`."""
    head, start, rest = text.partition(START)
    if not start:
        raise ValueError(f"no {START} marker")
    _, end, tail = rest.partition(END)
    return f"{head}{START}\n{markdown()}{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="replace the tables in this file")
    args = parser.parse_args()
    if args.write is None:
        print(markdown(), end="")
        return
    args.write.write_text(replace_in(args.write.read_text()))
    print(f"written: {args.write}")


if __name__ == "__main__":
    main()
