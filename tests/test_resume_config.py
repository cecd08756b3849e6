"""--resume with a changed config: applied keys go through (and are logged), keys the saved
state would not follow are refused by name."""

from __future__ import annotations

import logging

import pytest

from rcnnlab.config import load_config
from rcnnlab.errors import RunError
from rcnnlab.runs.resume import changed_keys, check_resume_config


def test_keys_the_saved_state_would_not_follow_are_refused():
    saved = load_config("base", [])
    given = load_config("base", ["train.lr=0.05", "train.epochs=30"])
    assert changed_keys(saved, given) == {"train.lr": (saved.train.lr, 0.05),
                                          "train.epochs": (saved.train.epochs, 30)}
    with pytest.raises(RunError, match=r"train.lr 0.001 in the run, 0.05 given\. Fix: "
                                       r"resume without them") as caught:
        check_resume_config(saved, given, "runs/x/config.yaml")
    assert "train.epochs" not in str(caught.value).split("Fix:")[0]


def test_what_resume_applies_goes_through_and_is_logged(caplog):
    saved = load_config("base", [])
    given = load_config("base", ["train.epochs=30", "eval.nms=gaussian", "data.workers=0",
                                 "train.eval_every=2"])
    with caplog.at_level(logging.INFO, logger="rcnnlab"):
        check_resume_config(saved, given, "runs/x/config.yaml")
    assert "resume applies train.epochs" in caplog.text and "eval.nms" in caplog.text
    check_resume_config(saved, saved, "runs/x/config.yaml")  # nothing changed: nothing said
