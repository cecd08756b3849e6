"""`rcnnlab compare`: exact deltas, class counts, config differences and source selection on
hand-made run folders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from rcnnlab.reporting.compare import ABSENT, RunSummary, compare_runs

CONFIG_A = {
    "name": "a",
    "out_dir": "runs",
    "data": {"train_json": "d/train.json", "val_fraction": 0.1},
    "model": {"arch": "resnet18_fpn", "anchor_sizes": None},
    "augment": {"enabled": True, "multiscale_sizes": []},
    "train": {"epochs": 2, "lr": 0.001},
    "eval": {"default_threshold": 0.5},
}
CONFIG_B = {
    "name": "b",
    "out_dir": "runs",
    "data": {"train_json": "d/train.json", "val_fraction": 0.1},
    "model": {"arch": "resnet18_fpn", "anchor_sizes": None, "residual_fpn": True},
    "augment": {"enabled": True, "multiscale_sizes": [40, 48, 56]},
    "train": {"epochs": 2, "lr": 0.0005},
    "eval": {"default_threshold": 0.5},
}
# epoch rows: training minutes A = (60 + 120) / 60 = 3.0, B = (90 + 150) / 60 = 4.0;
# img/s A = (8*60 + 5*120) / 180 = 6.0, B = (4*90 + 6*150) / 240 = 5.25
METRICS_A = [
    {"epoch": 1, "iterations": 10, "epoch_seconds": 60, "train_img_per_s": 8.0, "val_AP": 0.40,
     "val_AP50": 0.70, "val_APl": "nan", "val_seq_acc": 0.30, "val_AP_class1": 0.30},
    {"epoch": 2, "iterations": 20, "epoch_seconds": 120, "train_img_per_s": 5.0, "val_AP": 0.45,
     "val_AP50": 0.75, "val_APl": "nan", "val_seq_acc": 0.40, "val_AP_class1": 0.35},
]
METRICS_B = [
    {"epoch": 1, "iterations": 12, "epoch_seconds": 90, "train_img_per_s": 4.0, "val_AP": 0.52,
     "val_AP50": 0.82, "val_APl": "nan", "val_seq_acc": 0.50, "val_AP_class1": 0.50},
    {"epoch": 2, "iterations": 24, "epoch_seconds": 150, "train_img_per_s": 6.0, "val_AP": 0.48,
     "val_AP50": 0.80, "val_APl": "nan", "val_seq_acc": 0.45, "val_AP_class1": 0.44},
]


def _eval(ap: float, **extra) -> dict:
    doc = {"split": "valid", "n_images": 100, "threshold": 0.66, "seq_acc": 0.70, "AP": ap,
           "AP50": 0.80, "AP75": 0.45, "APs": 0.30, "APm": 0.60, "APl": None, "AR1": 0.4,
           "AR10": 0.6, "AR100": 0.62, "ARs": 0.5, "ARm": 0.7, "ARl": None}
    doc.update(extra)
    return doc


# per-class AP: class 1 +0.05 (improved), 2 +0.0004 (unchanged), 3 -0.05 (degraded), 4 +0.02
EVAL_VALID_A = _eval(0.50, AP_class1=0.60, AP_class2=0.40, AP_class3=0.50, AP_class4=0.70,
                     AP50_class1=0.90, AP50_class2=0.80, AP50_class3=0.85, AP50_class4=0.95)
EVAL_VALID_B = _eval(0.55, APl=0.30, seq_acc=0.65, threshold=0.70,
                     AP_class1=0.65, AP_class2=0.4004, AP_class3=0.45, AP_class4=0.72,
                     AP50_class1=0.90, AP50_class2=0.80, AP50_class3=0.85, AP50_class4=0.96)


def make_run(root: Path, name: str, config: dict, rows: list[dict],
             evals: dict[str, dict] | None = None) -> Path:
    """A run folder as `rcnnlab train` / `evaluate` leave it (no checkpoint)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with (run / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    for split, doc in (evals or {}).items():
        (run / f"eval_{split}.json").write_text(json.dumps({**doc, "split": split}))
    return run


@pytest.fixture
def two_runs(tmp_path):
    a = make_run(tmp_path, "a", CONFIG_A, METRICS_A, {"valid": EVAL_VALID_A})
    b = make_run(tmp_path, "b", CONFIG_B, METRICS_B, {"valid": EVAL_VALID_B})
    return a, b


def test_run_summary_reads_training_figures(two_runs):
    run = RunSummary.read(two_runs[1])
    assert run.name == "b"
    assert run.best_epoch == 1 and run.epochs == 2
    assert run.val_best["AP"] == pytest.approx(0.52)
    assert run.val_last["AP"] == pytest.approx(0.48)
    assert run.val_best["APl"] is None  # nan in metrics.csv is undefined
    assert run.train_seconds == pytest.approx(240)
    assert run.iterations == 24
    assert run.train_img_per_s == pytest.approx(5.25)
    assert set(run.evals) == {"valid"} and run.categories == {}


def test_metric_deltas_against_first_run(two_runs):
    cmp = compare_runs(two_runs)
    assert cmp.source == "valid" and cmp.names == ["a", "b"]
    ap = cmp.metric("AP")
    assert ap.source == "eval_valid.json"
    assert ap.values == [0.50, 0.55]
    assert ap.deltas[0] is None and ap.deltas[1] == pytest.approx(0.05)
    assert cmp.metric("seq_acc").deltas[1] == pytest.approx(-0.05)
    assert cmp.metric("threshold").deltas[1] == pytest.approx(0.04)
    apl = cmp.metric("APl")  # undefined in the baseline: a value but no delta
    assert apl.values == [None, 0.30] and apl.deltas == [None, None]
    assert cmp.metric("AP50").deltas[1] == pytest.approx(0.0)
    best = cmp.metric("best_val_AP")
    assert best.source == "metrics.csv"
    assert best.values == [0.45, 0.52] and best.deltas[1] == pytest.approx(0.07)
    assert cmp.metric("best_epoch").values == [2, 1]
    assert cmp.metric("best_epoch").deltas[1] == -1
    assert cmp.metric("last_val_AP").values == [0.45, 0.48]
    assert cmp.metric("last_val_AP").deltas[1] == pytest.approx(0.03)
    minutes = cmp.metric("train_minutes")
    assert minutes.values == pytest.approx([3.0, 4.0]) and minutes.deltas[1] == pytest.approx(1.0)
    assert minutes.better == "lower"
    assert cmp.metric("iterations").deltas[1] == 4
    assert cmp.metric("train_img_per_s").values == pytest.approx([6.0, 5.25])
    assert cmp.metric("train_img_per_s").deltas[1] == pytest.approx(-0.75)


def test_per_class_deltas_and_counts(two_runs):
    cmp = compare_runs(two_runs)
    rows = cmp.per_class["AP"]
    assert [r.category_id for r in rows] == [1, 2, 3, 4]
    assert [r.label for r in rows] == ["1", "2", "3", "4"]  # no checkpoint: ids
    assert [r.deltas[1] for r in rows] == pytest.approx([0.05, 0.0004, -0.05, 0.02])
    counts = cmp.counts["AP"][1]
    assert (counts.improved, counts.degraded, counts.unchanged, counts.missing) == (2, 1, 1, 0)
    assert cmp.counts["AP"][0] is None
    ap50 = cmp.counts["AP50"][1]  # only class 4 moved (+0.01)
    assert (ap50.improved, ap50.degraded, ap50.unchanged) == (1, 0, 3)


def test_config_differences(two_runs):
    diff = {d.key: d.values for d in compare_runs(two_runs).config_diff}
    assert diff == {
        "name": ["a", "b"],
        "model.residual_fpn": [ABSENT, True],
        "augment.multiscale_sizes": [[], [40, 48, 56]],
        "train.lr": [0.001, 0.0005],
    }
    # in config order: identity first, then data, model, augment, train
    assert list(diff) == ["name", "model.residual_fpn", "augment.multiscale_sizes", "train.lr"]


def test_markdown_shows_exact_deltas(two_runs, tmp_path):
    cmp = compare_runs(two_runs)
    md = cmp.to_markdown()
    lines = md.splitlines()
    assert "| metric | source | a | b |" in lines
    assert "| images | eval_valid.json | 100 | 100 (+0) |" in lines
    assert "| AP | eval_valid.json | 0.500 | 0.550 (+0.050) |" in lines
    assert "| APl | eval_valid.json | n/a | 0.300 |" in lines
    assert "| sequence accuracy | eval_valid.json | 0.700 | 0.650 (-0.050) |" in lines
    assert "| threshold (sequence accuracy) | eval_valid.json | 0.66 | 0.70 (+0.04) |" in lines
    assert "| best val AP | metrics.csv | 0.450 | 0.520 (+0.070) |" in lines
    assert "| best val AP epoch | metrics.csv | 2 | 1 (-1) |" in lines
    assert "| last val AP | metrics.csv | 0.450 | 0.480 (+0.030) |" in lines
    assert "| training minutes | metrics.csv | 3.0 | 4.0 (+1.0) |" in lines
    assert "| train img/s | metrics.csv | 6.00 | 5.25 (-0.75) |" in lines
    assert "## Per-class AP (eval_valid.json)" in lines
    assert "| 3 | 0.500 | 0.450 (-0.050) |" in lines
    assert "| 2 | 0.400 | 0.400 (+0.000) |" in lines  # +0.0004: unchanged
    assert "| **improved / degraded / unchanged** |  | 2 / 1 / 1 |" in lines
    assert "| **improved / degraded / unchanged** |  | 1 / 0 / 3 |" in lines  # AP50
    assert "| `train.lr` | 0.001 | 0.0005 |" in lines
    assert "| `augment.multiscale_sizes` | [] | [40, 48, 56] |" in lines
    assert "| `model.residual_fpn` | (absent) | true |" in lines
    assert "| `name` | a | b |" in lines
    assert "every run has eval_valid.json" in md
    out = cmp.write(tmp_path / "reports" / "compare.md")
    assert out.read_text() == md


def test_rich_colours_follow_direction(two_runs):
    console = Console(record=True, width=200, force_terminal=True, color_system="standard")
    console.print(compare_runs(two_runs).to_rich())
    text = console.export_text(clear=False)
    assert "0.550 (+0.050)" in text and "2 / 1 / 1" in text and "[40, 48, 56]" in text
    ansi = console.export_text(styles=True)
    green, red = "\x1b[32m", "\x1b[31m"
    assert green + " (+0.050)" in ansi  # AP up: better
    assert red + " (-0.050)" in ansi  # sequence accuracy down
    assert red + " (+1.0)" in ansi  # training minutes up: worse
    assert red + " (-0.75)" in ansi  # img/s down
    assert green + " (+0.04)" not in ansi and red + " (+0.04)" not in ansi  # threshold: neutral


def test_source_prefers_test_when_every_run_has_it(tmp_path):
    test_a = _eval(0.30, split="test", n_images=50)
    test_b = _eval(0.36, split="test", n_images=50)
    a = make_run(tmp_path, "a", CONFIG_A, METRICS_A, {"valid": EVAL_VALID_A, "test": test_a})
    b = make_run(tmp_path, "b", CONFIG_B, METRICS_B, {"valid": EVAL_VALID_B, "test": test_b})
    cmp = compare_runs([a, b])
    assert cmp.source == "test" and cmp.metric("AP").source == "eval_test.json"
    assert cmp.metric("AP").values == [0.30, 0.36]
    assert cmp.metric("AP").deltas[1] == pytest.approx(0.06)
    assert cmp.per_class["AP"] == []  # these test jsons hold no per-class values
    assert "No per-class values in this source." in cmp.to_markdown()
    forced = compare_runs([a, b], split="valid")
    assert forced.source == "valid" and forced.metric("AP").deltas[1] == pytest.approx(0.05)
    assert "requested" in forced.to_markdown()


def test_source_falls_back_to_valid_then_metrics_csv(tmp_path):
    test_a = _eval(0.30, split="test")
    a = make_run(tmp_path, "a", CONFIG_A, METRICS_A, {"valid": EVAL_VALID_A, "test": test_a})
    b = make_run(tmp_path, "b", CONFIG_B, METRICS_B, {"valid": EVAL_VALID_B})
    c = make_run(tmp_path, "c", CONFIG_B | {"name": "c"}, METRICS_B)
    assert compare_runs([a, b]).source == "valid"  # b has no eval_test.json

    cmp = compare_runs([a, b, c])  # c has no eval json at all
    assert cmp.source == "metrics"
    assert "no eval_valid.json: c" in cmp.source_note
    ap = cmp.metric("AP")  # the best epoch's validation row
    assert ap.source == "metrics.csv"
    assert ap.values == [0.45, 0.52, 0.52]
    assert ap.deltas[1:] == pytest.approx([0.07, 0.07])
    assert cmp.metric("seq_acc").values == [0.40, 0.50, 0.50]
    threshold = cmp.metric("threshold")
    assert threshold.source == "config eval.default_threshold"
    assert threshold.values == [0.5, 0.5, 0.5]
    assert "n_images" not in [r.key for r in cmp.metrics]
    assert cmp.metric("APl").values == [None, None, None]
    assert [r.deltas[1] for r in cmp.per_class["AP"]] == pytest.approx([0.15])
    md = cmp.to_markdown()
    assert "| AP | metrics.csv | 0.450 | 0.520 (+0.070) | 0.520 (+0.070) |" in md
    assert "## Per-class AP (metrics.csv)" in md

    with pytest.raises(ValueError, match=r"c: no eval_test\.json\. Fix: rcnnlab evaluate RUN "
                       r"--split test"):
        compare_runs([a, b, c], split="test")
    assert compare_runs([a, c], split="metrics").source == "metrics"


def test_three_runs_with_different_classes(tmp_path):
    base = _eval(0.50, AP_class1=0.500, AP_class2=0.500, AP_class3=0.500)
    other = _eval(0.49, AP_class1=0.501, AP_class2=0.4996, AP_class5=0.8)  # no class 3
    third = _eval(0.60, AP_class1=0.45, AP_class2=None, AP_class3=0.6)  # class 2 undefined
    runs = [make_run(tmp_path, n, CONFIG_A | {"name": n}, METRICS_A, {"valid": doc})
            for n, doc in (("r1", base), ("r2", other), ("r3", third))]
    cmp = compare_runs(runs)
    rows = {r.category_id: r for r in cmp.per_class["AP"]}
    assert sorted(rows) == [1, 2, 3, 5]  # the union
    assert rows[3].values == [0.5, None, 0.6] and rows[3].deltas == [None, None, pytest.approx(0.1)]
    assert rows[5].values == [None, 0.8, None] and rows[5].deltas == [None, None, None]
    r2, r3 = cmp.counts["AP"][1:]
    # +0.001 shows as a change, -0.0004 as -0.000 (unchanged); classes 3 and 5 are n/a
    assert (r2.improved, r2.degraded, r2.unchanged, r2.missing) == (1, 0, 1, 2)
    assert (r3.improved, r3.degraded, r3.unchanged, r3.missing) == (1, 1, 0, 2)
    assert cmp.metric("AP").deltas[1:] == pytest.approx([-0.01, 0.10])
    assert [d.key for d in cmp.config_diff] == ["name"]
    lines = cmp.to_markdown().splitlines()
    assert "| 5 | n/a | 0.800 | n/a |" in lines
    assert "| 3 | 0.500 | n/a | 0.600 (+0.100) |" in lines
    assert "| **improved / degraded / unchanged** |  | 1 / 0 / 1 (2 n/a) | 1 / 1 / 0 (2 n/a) |" \
        in lines


def test_inference_options_listed_with_config(tmp_path):
    a = make_run(tmp_path, "a", CONFIG_A, METRICS_A,
                 {"valid": _eval(0.5, inference={"nms": "nms", "tta_scales": [1.0]})})
    b = make_run(tmp_path, "b", CONFIG_A | {"name": "b"}, METRICS_A,
                 {"valid": _eval(0.5, inference={"nms": "gaussian", "tta_scales": [1.0]})})
    diff = {d.key: d.values for d in compare_runs([a, b]).config_diff}
    assert diff == {"name": ["a", "b"], "eval_valid.json:inference.nms": ["nms", "gaussian"]}


def test_errors(tmp_path, two_runs):
    a, b = two_runs
    with pytest.raises(ValueError, match=r"at least 2 run folders, got 1\. Fix: give two or "
                       r"more, e\.g\. rcnnlab compare runs/a runs/b"):
        compare_runs([a])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty: not a run folder \(no config\.yaml or "
                       r"metrics\.csv\)\. Fix: give folders written by `rcnnlab train`"):
        compare_runs([a, empty])
    (b / "metrics.csv").unlink()
    with pytest.raises(ValueError, match=r"b: not a run folder \(no metrics\.csv\)"):
        compare_runs([a, b])
    with pytest.raises(ValueError, match=r"missing: not a run folder"):
        compare_runs([a, tmp_path / "missing"])
    (a / "config.yaml").write_text("train: [1\n")
    with pytest.raises(ValueError, match=r"a/config\.yaml: not valid YAML"):
        RunSummary.read(a)
    (a / "config.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match=r"a/config\.yaml: expected a mapping"):
        RunSummary.read(a)


def test_same_folder_names_use_paths(tmp_path):
    a = make_run(tmp_path / "x", "run", CONFIG_A, METRICS_A, {"valid": EVAL_VALID_A})
    b = make_run(tmp_path / "y", "run", CONFIG_B, METRICS_B, {"valid": EVAL_VALID_B})
    assert compare_runs([a, b]).names == [str(a), str(b)]
