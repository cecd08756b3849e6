"""The configuration reference (docs/configuration.md, filled in at every build of the site by
docs/hooks.py) is generated from the config's source and the recipes."""

from __future__ import annotations

from pathlib import Path

from rcnnlab.config import config_keys
from rcnnlab.planning.rules import PLANNED_KEYS
from rcnnlab.reporting import config_reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_every_key_is_listed_once_with_a_meaning():
    entries = config_reference.entries()
    listed = [e.key for e in entries]
    sections = {"data", "model", "augment", "train", "eval", "data.synth"}
    expected = [k for k in config_keys() if k not in sections and not k.startswith("plan.")]
    assert listed == expected
    assert all(e.meaning for e in entries), [e.key for e in entries if not e.meaning]
    assert {e.key for e in entries if e.planned} == PLANNED_KEYS


def test_the_tables_hold_a_row_for_every_key():
    text = config_reference.markdown()
    rows = [line.split(" | ")[0].removeprefix("| `").removesuffix("`")
            for line in text.splitlines() if line.startswith("| `")]
    assert sorted(rows) == sorted(e.key for e in config_reference.entries())  # each once


def test_a_row_shows_the_default_the_plan_and_the_recipes():
    rows = {e.key: e for e in config_reference.entries()}
    fpn = rows["model.fpn_channels"]
    assert (fpn.default, fpn.planned, fpn.recipes) == ("256", True, {"base": "128",
                                                                     "orand": "128"})
    lr = rows["train.lr"]
    assert lr.recipes == {"base": "", "orand": "0.002"}  # base keeps the default 0.001
    assert rows["train.amp"].default == "off" and rows["data.synth.n_train"].default == "-"
    assert "never upscale" in rows["model.native_size"].meaning


def test_the_docs_page_is_filled_at_build_time_not_by_hand():
    """Between its markers the page holds a note, not tables: the build hook puts them there."""
    text = PAGE.read_text()
    between = text.partition(config_reference.START)[2].partition(config_reference.END)
    assert between[1], "docs/configuration.md lost its config-reference markers"
    assert "| `" not in between[0], "a hand-written copy of the tables would drift: remove it"
    filled = config_reference.replace_in(text)
    assert all(f"`{e.key}`" in filled for e in config_reference.entries())
