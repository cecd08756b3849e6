"""Config files: `base:` inheritance, dotted overrides, clear errors."""

from pathlib import Path

import pytest

from rcnnlab.config import ConfigError, apply_overrides, load_config
from rcnnlab.runs.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


def test_base_chain_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "train:\n  epochs: 5\n  lr: 0.01\nmodel:\n  arch: resnet34_fpn\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 7\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.batch_size=2", "model.native_size=true",
                                                "model.anchor_sizes=[[16], [32]]"])
    assert cfg.train.epochs == 7  # child wins
    assert cfg.train.lr == 0.01  # inherited
    assert cfg.model.arch == "resnet34_fpn"
    assert cfg.train.batch_size == 2 and cfg.model.native_size is True
    assert cfg.model.anchor_sizes == [[16], [32]]


def test_unknown_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="train.epochz"):
        load_config(None, ["train.epochz=3"])


def test_bad_value_names_the_key():
    with pytest.raises(ConfigError, match="model.arch"):
        load_config(None, ["model.arch=resnet999"])


def test_override_needs_equals():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["train.epochs"])


def test_base_loop_detected(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["name=x", "train.epochs=2"])
    run = RunDir(tmp_path)
    run.write_config(cfg)
    assert load_config(run.config_yaml) == cfg == run.read_config()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    load_config(path)


@pytest.mark.parametrize("item", ["train.objective=policy_gradient", "train.cls_loss=focal"])
def test_renamed_keys_name_the_new_one(item):
    with pytest.raises(ConfigError, match=r"is now train\.roi_loss.*Fix: e\.g\. train\.roi_loss="):
        load_config(None, [item])


def test_saved_configs_with_the_old_keys_are_read_as_before():
    from rcnnlab.config import config_from_dict

    for train, expected in (({"objective": "policy_gradient", "cls_loss": "ce"}, "policy_gradient"),
                            ({"objective": "standard", "cls_loss": "focal"}, "focal"),
                            ({"cls_loss": "ce"}, "ce")):
        assert config_from_dict({"train": train}).train.roi_loss == expected
