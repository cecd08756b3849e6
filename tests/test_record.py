"""The run record: confusion matrix with background, precision-recall curves, the record's plots
and the run record (api.report) on a tiny trained run."""

from __future__ import annotations

import base64
import csv
import importlib.metadata
import importlib.resources
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from rcnnlab import api
from rcnnlab.data.synth import generate_dataset
from rcnnlab.engine.progress import ProgressReporter
from rcnnlab.evaluation.coco import evaluate_detections, precision_curves
from rcnnlab.evaluation.confusion import confusion_matrix, match_image
from rcnnlab.reporting import plots
from rcnnlab.reporting.record.data import gather
from rcnnlab.reporting.record.render import (
    Code,
    Heading,
    Paragraph,
    RecordFigure,
    Table,
    render_html,
    render_markdown,
)
from rcnnlab.reporting.record.sections import environment_section
from rcnnlab.runs.checkpoint import load_checkpoint
from rcnnlab.runs.rundir import RunDir

from .test_end_to_end import tiny_config

CATEGORIES = [{"id": 0, "name": "zero"}, {"id": 7, "name": "seven"}]


def _gt(annotations, n_images=1):
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 100}
              for i in range(1, n_images + 1)]
    anns = [{"id": k, "image_id": img, "category_id": cat, "bbox": box}
            for k, (img, cat, box) in enumerate(annotations, start=1)]
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def _det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


# ------------------------------------------------------------------ confusion matrix
def test_confusion_counts_hits_confusions_background_misses_and_duplicates():
    gt = _gt([(1, 0, [10, 10, 20, 40]),   # found as "zero"
              (1, 7, [50, 10, 20, 40]),   # found, but as "zero"
              (1, 0, [100, 10, 20, 40])])  # never found
    dets = [_det(1, 0, [10, 10, 20, 40], 0.9),   # true positive
            _det(1, 0, [11, 10, 20, 40], 0.8),   # duplicate of the first box -> background
            _det(1, 0, [50, 12, 20, 40], 0.7),   # wrong class on the "seven" box
            _det(1, 7, [150, 10, 20, 40], 0.6),  # nothing there -> background
            _det(1, 0, [100, 10, 20, 40], 0.3)]  # below the threshold: not counted
    m = confusion_matrix(gt, dets, score_threshold=0.5)
    assert m.category_ids == (0, 7)
    #                    pred zero, pred seven, missed
    expected = [[1, 0, 1],   # true zero
                [1, 0, 0],   # true seven
                [1, 1, 0]]   # background
    assert m.counts.tolist() == expected
    assert m.labels({0: "zero", 7: "seven"}) == (["zero", "seven", "background"],
                                                 ["zero", "seven", "missed"])
    # the low-score detection counts once the threshold allows it: the miss becomes a hit
    assert confusion_matrix(gt, dets, score_threshold=0.2).counts[0].tolist() == [2, 0, 0]


def test_a_right_class_detection_wins_the_box_over_a_higher_scoring_wrong_one():
    gt = _gt([(1, 7, [10, 10, 20, 40])])
    dets = [_det(1, 0, [10, 10, 20, 40], 0.95), _det(1, 7, [10, 11, 20, 40], 0.6)]
    m = confusion_matrix(gt, dets, score_threshold=0.5)
    # the "seven" is a true positive; the "zero" on the same box is spurious, not a confusion
    assert m.counts.tolist() == [[0, 0, 0], [0, 1, 0], [1, 0, 0]]


def test_row_and_column_sums_are_boxes_and_detections_per_class():
    rng = np.random.default_rng(0)
    annotations, dets = [], []
    for image in range(1, 6):
        for _ in range(4):
            x, y = rng.uniform(0, 150), rng.uniform(0, 50)
            cat = int(rng.choice([0, 7]))
            annotations.append((image, cat, [x, y, 20, 30]))
            dets.append(_det(image, int(rng.choice([0, 7])),
                             [x + rng.uniform(-8, 8), y + rng.uniform(-8, 8), 20, 30],
                             float(rng.uniform(0, 1))))
    gt = _gt(annotations, n_images=5)
    m = confusion_matrix(gt, dets, score_threshold=0.3)
    n_gt = [sum(a[1] == c for a in annotations) for c in (0, 7)]
    n_det = [sum(d["category_id"] == c and d["score"] >= 0.3 for d in dets) for c in (0, 7)]
    assert m.counts[:2].sum(axis=1).tolist() == n_gt
    assert m.counts[:, :2].sum(axis=0).tolist() == n_det
    assert m.counts[2, 2] == 0


def test_match_image_needs_the_iou_threshold_for_hits_and_confusions():
    gt = [[0, 0, 10, 10], [20, 0, 30, 10]]
    # IoU with the first box: 5*10 / (10*10 + 10*10 - 50) = 1/3 -> no match at 0.5
    m = match_image(gt, [1, 2], [[5, 0, 15, 10], [20, 0, 30, 10]], [1, 1], [0.9, 0.8],
                    score_threshold=0.5)
    assert m.true_positives == () and m.confusions == ((1, 1),)
    assert m.false_positives == (0,) and m.missed == (0,) and m.num_errors == 3
    loose = match_image(gt, [1, 2], [[5, 0, 15, 10]], [1], [0.9], score_threshold=0.5,
                        iou_threshold=0.3)
    assert loose.true_positives == ((0, 0),) and loose.missed == (1,)


# ------------------------------------------------------------------ precision-recall curves
@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_precision_curves_are_cocos_interpolated_precision(backend):
    gt = _gt([(1, 0, [10, 10, 20, 40]), (1, 0, [50, 10, 20, 40])])
    gt["categories"] = [*CATEGORIES, {"id": 9, "name": "nine"}]
    gt["annotations"].append({"id": 3, "image_id": 1, "category_id": 7,
                              "bbox": [100, 10, 20, 40]})
    dets = [_det(1, 0, [10, 10, 20, 40], 0.9), _det(1, 0, [150, 50, 20, 40], 0.8),
            _det(1, 0, [50, 10, 20, 40], 0.7)]
    curves = precision_curves(gt, dets, backend=backend)
    assert curves.category_ids == (0, 7, 9) and len(curves.recall) == 101
    precision, scores = curves.at_iou(0.5)
    # TP, FP, TP: precision 1 up to recall 0.5, then 2/3 up to recall 1
    assert precision[:51, 0] == pytest.approx(1.0)
    assert precision[51:, 0] == pytest.approx(2 / 3)
    assert scores[:51, 0] == pytest.approx(0.9) and scores[51:, 0] == pytest.approx(0.7)
    assert (precision[:, 1] == 0).all()  # "seven" has a box but no detection
    assert (precision[:, 2] == -1).all()  # "nine" has no box
    metrics = evaluate_detections(gt, dets, backend=backend)
    assert precision[:, 0].mean() == pytest.approx(metrics.per_class_ap50[0])
    assert precision[:, 0].mean() == pytest.approx((51 + 50 * 2 / 3) / 101)


# ------------------------------------------------------------------ plots
def _assert_png(path: Path, min_size: tuple[int, int] = (400, 250)) -> None:
    """A real picture: a PNG of a sensible size with more than a handful of colours."""
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 50


METRIC_ROWS = [
    {"epoch": 1.0, "iterations": 10.0, "lr": 1e-3, "loss": 1.8, "loss_cls": 0.9,
     "loss_bbox": 0.8, "loss_anchor": 0.1, "val_loss": 1.5, "val_loss_cls": 0.8,
     "val_loss_bbox": 0.6, "val_loss_anchor": 0.1, "val_AP": 0.2, "val_AP50": 0.5,
     "val_AP75": 0.1, "val_seq_acc": 0.05},
    {"epoch": 2.0, "iterations": 20.0, "lr": 5e-4, "loss": 1.1, "loss_cls": 0.5,
     "loss_bbox": 0.55, "loss_anchor": 0.05, "val_loss": None, "val_loss_cls": None,
     "val_loss_bbox": None, "val_loss_anchor": None, "val_AP": float("nan"),
     "val_AP50": float("nan"), "val_AP75": float("nan"), "val_seq_acc": None},
    {"epoch": 3.0, "iterations": 30.0, "lr": 1e-5, "loss": 0.7, "loss_cls": 0.3,
     "loss_bbox": 0.37, "loss_anchor": 0.03, "val_loss": 1.0, "val_loss_cls": 0.5,
     "val_loss_bbox": 0.45, "val_loss_anchor": 0.05, "val_AP": 0.6, "val_AP50": 0.9,
     "val_AP75": 0.7, "val_seq_acc": 0.5},
]


def test_curve_plots_write_pictures(tmp_path):
    _assert_png(plots.plot_losses(METRIC_ROWS, tmp_path / "a" / "losses.png"))
    _assert_png(plots.plot_validation_map(METRIC_ROWS, tmp_path / "val.png", seq_threshold=0.5))
    steps = list(range(1, 31))
    lrs = [1e-3 * min(1, s / 5) * (1 + np.cos(np.pi * s / 30)) / 2 for s in steps]
    _assert_png(plots.plot_learning_rate(steps, lrs, tmp_path / "lr_it.png",
                                         epoch_ends=[10, 20, 30]))
    _assert_png(plots.plot_learning_rate([1, 2, 3], [r["lr"] for r in METRIC_ROWS],
                                         tmp_path / "lr_ep.png", unit="epoch"))
    sweep = [{"threshold": t, "num_detections": 100 - 50 * t, "mAP": 0.7 - 0.1 * t,
              "AP50": 0.95 - 0.1 * t, "accuracy": 0.5 + 0.3 * t - 0.2 * t * t}
             for t in np.round(np.arange(0.45, 0.91, 0.01), 2)]
    _assert_png(plots.plot_threshold_sweep(sweep, 0.75, tmp_path / "sweep.png"))
    _assert_png(plots.plot_class_distribution(["0", "1", "2"], {"train": [50, 30, 20],
                                                                "valid": [4, 5, 1]},
                                              tmp_path / "classes.png"))


def test_scale_weights_are_drawn_as_held_steps_from_0_to_the_end_of_training():
    # every weight is 1 until the first update (iteration 100); the last update (200) holds
    # until training ends (244)
    its, weights = plots._held_steps([100, 200], [1.0, 2.5], 1.0, 244)
    assert its == [0, 100, 200, 244] and weights == [1.0, 1.0, 2.5, 2.5]


def test_pr_and_confusion_plots_write_pictures(tmp_path):
    recall = np.linspace(0, 1, 101)
    prec = np.stack([np.where(recall <= 0.8, 1 - 0.2 * recall, 0), np.full(101, -1.0),
                     np.where(recall <= 0.5, 0.9, 0)], axis=1)
    scores = np.stack([np.where(recall <= 0.8, 1 - recall, 0), np.zeros(101),
                       np.where(recall <= 0.5, 0.7, 0)], axis=1)
    _assert_png(plots.plot_pr_curves(recall, {0.5: prec, 0.75: prec * 0.8}, ["a", "b", "c"],
                                     tmp_path / "pr.png",
                                     scores_by_iou={0.5: scores, 0.75: scores}, threshold=0.5))
    counts = np.array([[8, 1, 1], [0, 5, 2], [3, 1, 0]])
    _assert_png(plots.plot_confusion(counts, ["a", "b", "background"], ["a", "b", "missed"],
                                     tmp_path / "confusion.png"))


def test_detection_grid_draws_every_kind(tmp_path):
    paths = []
    for i, size in enumerate(((160, 50), (120, 60))):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", size, (200, 200, 200)).save(path)
        paths.append(path)
    panels = [plots.GridPanel(paths[0], "#1: true 12, read 17 ✗",
                              true_positives=[([5, 5, 25, 45], "1 .99")],
                              false_positives=[([30, 5, 50, 45], "7 .81 (true 2)")],
                              missed=[([60, 5, 80, 45], "3")]),
              plots.GridPanel(paths[1], "#2: true 4, read 4 ✓",
                              true_positives=[([10, 10, 40, 55], "4 1.00")])]
    out = plots.plot_detection_grid(panels, tmp_path / "grid.png", title="grid")
    _assert_png(out)
    with Image.open(out) as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    for colour in (plots.TP_COLOR, plots.FP_COLOR, plots.MISSED_COLOR):
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels.astype(int) - rgb).sum(axis=1) < 30).sum() > 50, colour


# ------------------------------------------------------------------ api.report
@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """A 2-iteration run on generated house numbers, tuned, with its record written."""
    synth = tmp_path_factory.mktemp("synth")
    generate_dataset(synth, n_train=8, n_valid=4, n_test=4, seed=3)
    cfg = tiny_config(synth, tmp_path_factory.mktemp("runs"), "train.epochs=1",
                      "train.iters_per_epoch=2", "train.lr=0.0007")
    run = api.train(cfg, reporter=ProgressReporter(quiet=True)).run_dir
    api.tune(run, device="cpu")
    return run, api.report(run, device="cpu")


def test_record_reports_the_run(recorded_run):
    run, paths = recorded_run
    md = (run / "report.md").read_text()
    assert paths["markdown"] == run / "report.md" and paths["html"] == run / "report.html"
    for section in ("## Summary", "## Model", "## Data", "## Training", "## Evaluation",
                    "### Generalisation gap", "### Per-class AP", "## Hyperparameters",
                    "## Environment"):
        assert f"\n{section}\n" in md, section
    assert "  lr: 0.0007\n" in md  # the resolved config, in full
    assert "| iterations | 2 |" in md and "| epochs | 1 of 1 |" in md
    assert "| batch size | 2 |" in md and "| images seen | 4 |" in md
    assert re.search(r"^\| train \| `.*` \| 8 \| ", md, flags=re.M)  # 8 training images
    assert re.search(r"^\| valid \| `.*valid/annotations.json` \| 4 \| ", md, flags=re.M)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    peak = [float(r["peak_memory_mb"]) for r in rows if r.get("peak_memory_mb")]
    assert (f"| peak memory | {max(peak):.0f} MB |" if peak else
            "| peak memory | n/a (this run did not record it in metrics.csv) |") in md
    # metrics of both splits, as evaluate computes them; no large digits -> APl n/a
    valid = api.evaluate(run, split="valid", device="cpu", save=False)
    test = api.evaluate(run, split="test", device="cpu", save=False)
    assert "| metric | valid (4 images) | test (4 images) |" in md
    assert f"| AP | {valid.metrics.AP:.4f} | {test.metrics.AP:.4f} |" in md
    assert "| APl | n/a | n/a |" in md
    threshold = load_checkpoint(run / "checkpoints" / "best.pt")["threshold"]
    assert (f"| sequence accuracy @ {threshold:.2f} | {valid.seq_acc:.4f} | "
            f"{test.seq_acc:.4f} |") in md
    assert f"| sequence accuracy | {valid.seq_acc:.4f} | {test.seq_acc:.4f} | " \
           f"{test.seq_acc - valid.seq_acc:+.4f} |" in md
    assert f"Threshold {threshold:.2f}, tuned on the validation split" in md
    # every digit in the class table (boxes per split) and the per-class AP table
    assert len(re.findall(r"^\| \d+ \| \d \| \d+ \(", md, flags=re.M)) == 10
    ap_rows = re.findall(r"^\| \d+ \| \d \| (?:\d\.\d{4}|n/a) \|", md, flags=re.M)
    assert len(ap_rows) == 10
    # every figure exists, is linked from the page and holds a picture
    figures = {k: v for k, v in paths.items() if k not in ("markdown", "html")}
    assert set(figures) == {"class_distribution", "losses", "validation", "learning_rate",
                            "threshold_sweep", "pr_curves", "confusion", "detections"}
    for name, path in figures.items():
        assert path.parent == run / "figures"
        assert f"![{name}](figures/{name}.png)" in md
        _assert_png(path)


def test_record_names_the_machine_that_trained(recorded_run):
    """The trainer saves its environment; a record rewritten without it says whose it shows."""
    run, _ = recorded_run
    rows = dict(json.loads((run / "environment.json").read_text()))
    assert rows["device"] == "cpu (train.device: auto)"
    assert rows["torch"] == importlib.metadata.version("torch")
    md = (run / "report.md").read_text()
    assert "saved it in `environment.json` when training started" in md
    assert "| device | cpu (train.device: auto) |" in md and f"| torch | {rows['torch']} |" in md

    best = SimpleNamespace(config=SimpleNamespace(train=SimpleNamespace(device="auto")))
    rec = gather(RunDir(run / "absent"), best=best, last=None, model_info={}, splits={},
                 results={}, split="test")
    _, note, fallback = environment_section(rec)
    assert "the machine of `rcnnlab report`, which need not be the one that trained" in note.text
    assert ["device", "auto"] in fallback.rows


def test_record_html_is_one_self_contained_page(recorded_run):
    run, paths = recorded_run
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 8 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert re.findall(r'href="([^"]*)"', page) and all(
        h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "<script" not in page and "url(" not in page
    assert "<td class=num>n/a</td>" in page  # APl
    assert "lr: 0.0007" in page and "<table>" in page
    # printed, the config block is shown whole rather than cut at its on-screen scroll height
    assert re.search(r"@media print\{pre\{max-height:none;overflow:visible", page)


def test_learning_rate_is_read_per_iteration_from_tensorboard(recorded_run, tmp_path):
    run, _ = recorded_run
    steps, lrs = RunDir(run).read_tb_scalars("iter/lr")
    assert steps == [1, 2]
    # the last logged LR is the one metrics.csv holds for the epoch
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert lrs[-1] == pytest.approx(float(rows[-1]["lr"]), rel=1e-4)
    assert RunDir(tmp_path / "absent").read_tb_scalars("iter/lr") is None
    assert RunDir(run).read_tb_scalars("no/such/tag") is None


# ------------------------------------------------------------------ rendering
def test_markdown_and_html_render_the_same_blocks(tmp_path):
    png = tmp_path / "figures" / "f.png"
    png.parent.mkdir()
    Image.new("RGB", (4, 3), "red").save(png)
    blocks = [Heading(1, "Run record: <x>"), Paragraph("Written from `runs/x`, **test** split."),
              Heading(2, "Data & more"), Table(["", ""], [["images", "12"], ["a|b", "n/a"]]),
              Table(["metric", "valid"], [["AP", "0.5000"]]), Code("train:\n  lr: 0.001\n"),
              RecordFigure(png, "A figure's caption with `code`.")]
    md = render_markdown(blocks, tmp_path)
    assert md == ("# Run record: <x>\n\nWritten from `runs/x`, **test** split.\n\n"
                  "## Data & more\n\n|  |  |\n| --- | ---: |\n| images | 12 |\n"
                  "| a\\|b | n/a |\n\n| metric | valid |\n| --- | ---: |\n| AP | 0.5000 |\n\n"
                  "```yaml\ntrain:\n  lr: 0.001\n```\n\n![f](figures/f.png)\n\n"
                  "*A figure's caption with `code`.*\n")
    page = render_html(blocks, "a <title>")
    assert page.startswith("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                           "<title>a &lt;title&gt;</title><style>\nbody{")
    assert page.endswith("</style></head><body>\n" + page.split("<body>\n", 1)[1])
    body = page.split("<body>\n", 1)[1].splitlines()
    assert body == [
        '<h1 id="run-record-x">Run record: &lt;x&gt;</h1>',
        '<nav><a href="#data-more">Data &amp; more</a></nav>',
        "<p>Written from <code>runs/x</code>, <b>test</b> split.</p>",
        '<h2 id="data-more">Data &amp; more</h2>',
        "<table><tbody><tr><td>images</td><td class=num>12</td></tr>"
        "<tr><td>a|b</td><td class=num>n/a</td></tr></tbody></table>",
        "<table><thead><tr><th>metric</th><th>valid</th></tr></thead>"
        "<tbody><tr><td>AP</td><td class=num>0.5000</td></tr></tbody></table>",
        "<pre>train:", "  lr: 0.001", "</pre>",
        '<figure><img alt="f" src="data:image/png;base64,'
        + base64.b64encode(png.read_bytes()).decode() + '"><figcaption>A figure&#39;s caption '
        "with <code>code</code>.</figcaption></figure>",
        "</body></html>"]


def test_the_page_template_is_package_data():
    templates = importlib.resources.files("rcnnlab.reporting") / "templates"
    assert (templates / "record.html").is_file() and (templates / "record.css").is_file()
    setup = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"reporting/templates/*"' in setup  # so that a wheel carries them


def test_the_data_table_says_where_each_split_came_from(synth_dir):
    from rcnnlab.config import DataConfig
    from rcnnlab.data.coco import holdout_split, load_coco
    from rcnnlab.data.stats import compute_stats
    from rcnnlab.reporting.record.sections import data_section

    train = load_coco(synth_dir / "train" / "annotations.json")
    valid = load_coco(synth_dir / "valid" / "annotations.json")
    kept, held = holdout_split(train, 0.25, 0)

    def sources(splits: dict, data: DataConfig) -> dict[str, str]:
        rec = SimpleNamespace(stats={s: compute_stats(d) for s, d in splits.items()},
                              cfg=SimpleNamespace(data=data),
                              best=SimpleNamespace(categories=train.categories), digits=None)
        table = data_section(rec, {"class_distribution": None})[1]
        return {row[0]: row[1] for row in table.rows}

    # generated data names no valid json in the config, yet valid is read from its own json
    named = sources({"train": train, "valid": valid}, DataConfig(synth={"out_dir": "x"}))
    assert named["valid"] == f"`{valid.json_path}`"
    held_out = sources({"train": kept, "valid": held},
                       DataConfig(train_json="t.json", val_fraction=0.25, split_seed=0))
    assert held_out == {"train": f"`{train.json_path}`",
                        "valid": "held out of train (25%, seed 0)"}
