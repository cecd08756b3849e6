"""Config files: `base:` inheritance, dotted overrides, clear errors."""


import pytest

from rcnnlab.config import BUILTIN_CONFIGS, ConfigError, apply_overrides, load_config
from rcnnlab.runs.rundir import RunDir


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


@pytest.mark.parametrize("path", sorted(BUILTIN_CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    load_config(path)


def test_built_in_recipes_load_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("orand", "orand.yaml", "configs/orand.yaml"):
        cfg = load_config(name)
        assert cfg.name == "orand" and cfg.model.arch == "resnet18_fpn"  # base.yaml applied
    assert load_config("demo").name == "demo"
    # a file of that name in the working folder wins over the recipe
    (tmp_path / "orand").write_text("name: mine\n")
    assert load_config("orand").name == "mine"
    with pytest.raises(ConfigError, match="nope: config file not found. Fix: give a path to a "
                                          "YAML file, or one of the built-in recipes: base, "
                                          "demo, orand"):
        load_config("nope")


def test_built_in_recipes_are_listed_with_a_line_each():
    from rcnnlab.config import builtin_configs

    recipes = builtin_configs()
    assert set(recipes) == {"base", "demo", "orand"}
    assert recipes["orand"][1].startswith("ORAND-CAR-A handwritten cheque amounts")


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


def test_amp_off_is_the_word_not_yaml_false(tmp_path):
    # YAML 1.1 reads a bare `off` as false; the amp modes take it as the mode "off"
    cfg = load_config(None, ["train.amp=off", "eval.amp=off"])
    assert cfg.train.amp == "off" and cfg.eval.amp == "off"
    (tmp_path / "c.yaml").write_text("train:\n  amp: off\n")
    assert load_config(str(tmp_path / "c.yaml")).train.amp == "off"
    assert load_config("orand").train.amp == "auto"  # the CPU recipes choose by the machine
    with pytest.raises(ConfigError, match="train.amp"):
        load_config(None, ["train.amp=true"])


def test_label_smoothing_only_with_a_cross_entropy_loss():
    assert load_config(None, ["train.label_smoothing=0.1"]).train.label_smoothing == 0.1
    assert load_config(None, ["train.roi_loss=weighted_ce", "train.class_weights=inverse_frequency",
                              "train.label_smoothing=0.1"]).train.label_smoothing == 0.1
    with pytest.raises(ConfigError, match="invalid config: train.label_smoothing is for "
                                          "train.roi_loss=ce"):
        load_config(None, ["train.roi_loss=focal", "train.label_smoothing=0.1"])
    with pytest.raises(ConfigError, match="train.label_smoothing"):
        load_config(None, ["train.label_smoothing=1.0"])


@pytest.mark.parametrize("override, words", [
    ("train.epochs=true", "train.epochs: true / false where a value"),
    ("train.backbone_lr_mult=-1", "train.backbone_lr_mult: Input should be greater than or"),
    ("model.min_size=-10", "model.min_size: Input should be greater than or equal to 32"),
    ("model.box_score_thresh=1.5", "model.box_score_thresh: Input should be less than 1"),
    ("model.rpn_post_nms_top_n_test=0", "model.rpn_post_nms_top_n_test: Input should be"),
    ("train.momentum=5", "train.momentum: Input should be less than 1 (given: 5)"),
    ("train.weight_decay=-0.5", "(given: -0.5)"),
    ("augment.scale=[1.2,0.8]", "augment.scale: the scale range must be 0 < low <= high"),
    ("eval.default_threshold=3", "eval.default_threshold: Input should be less than or"),
])
def test_numbers_out_of_range_are_refused_naming_key_and_value(override, words):
    with pytest.raises(ConfigError, match="invalid config") as caught:
        load_config(None, [override])
    assert words in str(caught.value)


def test_amp_off_stays_a_word_while_true_is_no_number():
    assert load_config(None, ["train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match="train.amp"):
        load_config(None, ["train.amp=true"])


def test_a_threshold_option_out_of_range_is_refused():
    from rcnnlab.config import check_threshold

    assert check_threshold(None) is None and check_threshold(0.0) == 0.0
    for bad in (3, -0.1, True):
        with pytest.raises(ConfigError, match="out of range: give a score threshold in 0-1"):
            check_threshold(bad)
