"""The README's configuration reference is generated from config.py and the recipes."""

from __future__ import annotations

from pathlib import Path

from rcnnlab.config import config_keys
from rcnnlab.planning.rules import PLANNED_KEYS
from rcnnlab.reporting import config_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_holds_the_generated_reference():
    text = README.read_text()
    assert config_reference.replace_in(text) == text, (
        "README.md's configuration reference is out of date: python -m "
        "rcnnlab.reporting.config_reference --write README.md")


def test_every_key_is_listed_once_with_a_meaning():
    entries = config_reference.entries()
    listed = [e.key for e in entries]
    sections = {"data", "model", "augment", "train", "eval", "data.synth"}
    expected = [k for k in config_keys() if k not in sections and not k.startswith("plan.")]
    assert listed == expected
    assert all(e.meaning for e in entries), [e.key for e in entries if not e.meaning]
    assert {e.key for e in entries if e.planned} == PLANNED_KEYS


def test_a_row_shows_the_default_the_plan_and_the_recipes():
    rows = {e.key: e for e in config_reference.entries()}
    fpn = rows["model.fpn_channels"]
    assert (fpn.default, fpn.planned, fpn.recipes) == ("256", True, {"base": "128",
                                                                     "orand": "128"})
    lr = rows["train.lr"]
    assert lr.recipes == {"base": "", "orand": "0.002"}  # base keeps the default 0.001
    assert rows["train.amp"].default == "off" and rows["data.synth.n_train"].default == "-"
    assert "never upscale" in rows["model.native_size"].meaning
