"""rcnnlab against a peer detector on several datasets: Ultralytics YOLOv8n from scratch, same
data, same wall-clock budget, same scorer.

For each dataset and seed, one invocation trains rcnnlab (by default with no recipe: the plan
`rcnnlab train` makes for the data; `--config NAME`, repeatable, trains the recipes named
instead, `plan` being the plan) and YOLOv8n from
scratch at each `--imgsz` (320 and 640 by default; the better one counts), each for `--minutes`
of wall clock with validation included; then scores every model on the same held-out test split
with rcnnlab's COCO scorer and prints one row per dataset, detector and seed: mAP, AP50, AP75,
sequence accuracy where the classes are digits, train img/s and predict img/s; then the mean
± std over seeds and, per dataset, rcnnlab's lead over YOLOv8n's better size. Nothing is
asserted: the script measures and prints.

The datasets (`--datasets NAME[:SEEDS]`, seeds comma-separated, else `--seeds`):
* `orand`: ORAND-CAR-A (`../shared/data/orand-car-a`, 1,080 cheque amounts, ~155x53 px). The
  `orand` recipe's held-out 10 % (108 images, split seed 0) is the test split; the other 972
  are split again the way rcnnlab splits them with `data.val_fraction=0.1`: 875 train, 97 valid.
* `building`: building-characters-yolo (640x640 crops, 1-4 large characters, one class
  `character`): its own train (888), valid (36) and test (37) splits.
* `numbers`: number-extraction-yolo (640x640 screenshots and photos, up to 27 small digits an
  image): its valid split (63) is the training side, 10 % of it held out as valid (6), and its
  test split (13) is scored.
* `synth`: generated house numbers, the demo's data (1,200 / 300 / 500 images, seed 0),
  written once into the work folder.

The protocol (both detectors see exactly the same images):
* Every split is written as a COCO json into `<work>/<dataset>/`; rcnnlab trains on train,
  validates on valid (its best checkpoint, and `rcnnlab tune`'s threshold on digit classes), and
  is evaluated on test; YOLO trains on a YOLO dataset of the same train and valid images
  (`<work>/<dataset>/yolo/`: images symlinked, labels `class cx cy w h` normalised, class = the
  category's index in id order).
* Budget: rcnnlab `train.time_budget=<minutes>` (training + validation); YOLO `time=<minutes>/60`
  hours (Ultralytics stops then, validation included, and re-plans its epochs after the first).
  `wall min` is each side's whole training call. Both run on the same number of torch threads
  (`--threads`, default torch's): left alone, Ultralytics would train on cpu_count - 1 threads.
* YOLO: Ultralytics' default hyperparameters; set are only data, imgsz, time, batch (16, its
  default), the CPU device, the seed, plots=False, pretrained=False (from scratch) and the run
  folder. `epochs` is left at Ultralytics' default (100; `time=` overrides it): a large
  `epochs` would change what `optimizer=auto` picks, i.e. the recipe itself.
* No download: Ultralytics runs with `YOLO_OFFLINE=1`, `YOLO_AUTOINSTALL=0`, a private settings
  folder with sync off, and a font named `Arial.ttf` in it (matplotlib's DejaVu Sans): its
  dataset check otherwise fetches Arial from GitHub even offline. The script watches the
  process (a `sys.addaudithook`) and prints every network attempt it saw, or "none".
* Scoring, the same for both: `rcnnlab.evaluation.coco.evaluate_detections` on the test split,
  COCO results in its own image and category ids. YOLO predicts with Ultralytics' validation
  settings (conf=0.001, iou=0.7) and max_det=100. On digit classes the threshold of the number
  read is tuned on valid (never test) with `rcnnlab.evaluation.threshold.sweep_thresholds`, each
  detector over the range its user would sweep (rcnnlab: `rcnnlab tune`'s, 0.45-0.90; YOLO:
  `--yolo-sweep`, 0.05-0.95, its confidences being lower), and applied to test; both read
  numbers with `eval.read_iou` 0.4.
* Speed: `train img/s` is the images trained (iterations x batch, or epochs x training images)
  over the training call's wall time, validation included; `predict img/s` the test images over
  one prediction pass of them from their files, batches of 8, after a warm-up batch.

    python benchmarks/peer_yolo.py --datasets orand:0,1,2 building numbers synth  # the docs' table
    python benchmarks/peer_yolo.py --minutes 0.5 --datasets numbers --imgsz 320 --out /tmp/p
    python benchmarks/peer_yolo.py --datasets orand --config plan --config orand  # both rows
    python benchmarks/peer_yolo.py --only rcnnlab --datasets building train.batch_size=4

Needs ultralytics (`pip install 'rcnnlab[peer]'`); without it the rcnnlab rows still run. Writes
the rows to `<out>/peer.csv`, the runs to `<out>/<dataset>/`.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import logging
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from rcnnlab.data.categories import digit_names
from rcnnlab.data.coco import CocoData, holdout_split, load_coco
from rcnnlab.data.convert import write_coco
from rcnnlab.data.splits import load_splits
from rcnnlab.evaluation.coco import CocoMetrics, evaluate_detections
from rcnnlab.evaluation.pipeline import SequenceAccuracy
from rcnnlab.evaluation.threshold import sweep_thresholds

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NO_ULTRALYTICS = "ultralytics is not installed: pip install 'rcnnlab[peer]'"
# Ultralytics' validation settings for the detections that are scored
YOLO_CONF, YOLO_IOU, MAX_DET = 0.001, 0.7, 100
PREDICT_BATCH = 8
READ_IOU = 0.4  # how both read numbers (rcnnlab's eval.read_iou on digit data)
NETWORK_EVENTS = frozenset({"socket.connect", "socket.getaddrinfo", "socket.gethostbyname",
                            "socket.gethostbyaddr", "socket.sendto", "urllib.Request"})


@dataclass
class Row:
    """One detector trained from one seed on one dataset, scored on its test split."""

    dataset: str
    detector: str
    seed: int
    wall_min: float  # wall time of the training call (training, validation, data loading)
    epochs: int
    mAP: float | None
    AP50: float | None
    AP75: float | None
    seq_acc: float | None  # None where the classes are not digits
    threshold: float | None
    train_ips: float  # images trained per wall second of the training call
    predict_ips: float  # test images per second of a prediction pass


# ------------------------------------------------------------------------- the datasets
@dataclass
class Splits:
    """A dataset's train, valid and test splits, as both detectors see them."""

    train: CocoData
    valid: CocoData
    test: CocoData

    @property
    def digits(self) -> bool:
        """Whether the classes are digits (a number is read and scored)."""
        return digit_names(self.train.categories) is not None


def heldout_split(source: str | Path, config: str, overrides: Sequence[str] = ()
                  ) -> dict[str, CocoData]:
    """The source split as rcnnlab's `config` recipe splits it: {"train": the training side,
    "valid": the held-out images} (orand: 972 and 108 of ORAND-CAR-A's 1,080)."""
    from rcnnlab.config import load_config

    cfg = load_config(config, [f"data.train_json={source}", *overrides])
    return load_splits(cfg.data, need=("train", "valid"))


def orand_splits(shared: Path, work: Path) -> Splits:
    """ORAND-CAR-A: the orand recipe's held-out tenth is test; the rest 90 / 10."""
    outer = heldout_split(shared / "orand-car-a" / "instances_train.json", "orand")
    train, valid = holdout_split(outer["train"], 0.1, 0)
    return Splits(train, valid, outer["valid"])


def building_splits(shared: Path, work: Path) -> Splits:
    """building-characters-yolo: its own train, valid and test splits."""
    spec = shared / "building-characters-yolo" / "data.yaml"
    return Splits(*(load_coco(f"{spec}:{key}") for key in ("train", "val", "test")))


def numbers_splits(shared: Path, work: Path) -> Splits:
    """number-extraction-yolo: trained on its valid split (a tenth held out), scored on test."""
    spec = shared / "number-extraction-yolo" / "data.yaml"
    train, valid = holdout_split(load_coco(f"{spec}:val"), 0.1, 0)
    return Splits(train, valid, load_coco(f"{spec}:test"))


def synth_splits(shared: Path, work: Path) -> Splits:
    """The demo's generated house numbers, generated once into the work folder."""
    from rcnnlab.config import load_config
    from rcnnlab.data.splits import ensure_synth

    data = load_config("demo").data
    data = data.model_copy(update={"synth": data.synth.model_copy(
        update={"out_dir": str(work / "synth")})})
    ensure_synth(data)
    return Splits(*(load_splits(data, need=(s,))[s] for s in ("train", "valid", "test")))


DATASETS: dict[str, Callable[[Path, Path], Splits]] = {
    "orand": orand_splits, "building": building_splits, "numbers": numbers_splits,
    "synth": synth_splits}


def write_splits(splits: Splits, folder: Path) -> list[str]:
    """Write the three splits as COCO jsons into `folder`; the rcnnlab overrides that name them
    (file names stay relative to each split's image folder, given as `data.*_images`)."""
    items = []
    for name in ("train", "valid", "test"):
        data = getattr(splits, name)
        path = write_coco(data.to_coco_dict(), folder / f"{name}.json")
        items += [f"data.{name}_json={path}", f"data.{name}_images={data.image_root}"]
    return items


def rcnnlab_overrides(split_items: Sequence[str], *, minutes: float, seed: int, out: Path,
                      name: str, threads: int | None, extra: Sequence[str] = ()) -> list[str]:
    """The overrides of an rcnnlab run: the written splits, `minutes` of wall time, the seed and
    the run folder; the user's `extra` last, so they win."""
    items = [*split_items, f"train.time_budget={minutes}", f"train.seed={seed}",
             f"out_dir={out}", f"name={name}"]
    if threads is not None:
        items.append(f"train.threads={threads}")
    return [*items, *extra]


# ------------------------------------------------------------------------- the YOLO dataset
def class_index(categories: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """Category id -> YOLO class index: the category's position in id order."""
    return {cid: i for i, cid in enumerate(sorted(int(c["id"]) for c in categories))}


def yolo_label_lines(image: Mapping[str, Any], annotations: Sequence[Mapping[str, Any]],
                     classes: Mapping[int, int]) -> list[str]:
    """One image's YOLO label lines, `class cx cy w h` normalised by the image size, from its
    COCO annotations (bbox xywh in pixels). Crowd regions are left out, as rcnnlab leaves them
    out of its training targets."""
    width, height = image["width"], image["height"]
    lines = []
    for ann in annotations:
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        lines.append(f"{classes[ann['category_id']]} {(x + w / 2) / width:.6f} "
                     f"{(y + h / 2) / height:.6f} {w / width:.6f} {h / height:.6f}")
    return lines


def write_yolo_split(data: CocoData, root: Path, split: str) -> int:
    """Write `data` as the YOLO split `split` under `root` (images/<split> symlinked to the
    source files, labels/<split> written); returns the number of images."""
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    classes = class_index(data.categories)
    seen: set[str] = set()
    for img in data.images:
        name = Path(img["file_name"]).name
        if name in seen:  # one folder per split: two sources of one name would overwrite
            raise ValueError(f"{data.json_path}: two images named {name}")
        seen.add(name)
        link = images / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to((data.image_root / img["file_name"]).resolve())
        lines = yolo_label_lines(img, data.annotations.get(img["id"], []), classes)
        (labels / f"{Path(name).stem}.txt").write_text("".join(f"{line}\n" for line in lines))
    return len(data.images)


def write_yolo_dataset(train: CocoData, valid: CocoData, root: Path) -> Path:
    """The YOLO dataset of rcnnlab's training and validation images, and its data.yaml."""
    write_yolo_split(train, root, "train")
    write_yolo_split(valid, root, "val")
    names = {i: str(c["name"]) for i, c in enumerate(sorted(train.categories,
                                                            key=lambda c: c["id"]))}
    spec = {"path": str(root.resolve()), "train": "images/train", "val": "images/val",
            "names": names}
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ------------------------------------------------------------------------- scoring
def yolo_detections(image_id: int, boxes_xyxy: Any, classes: Any, scores: Any,
                    category_ids: Sequence[int]) -> list[dict]:
    """One image's YOLO detections as COCO results: class index -> the category id at that
    position of `category_ids` (id order), boxes xyxy -> xywh."""
    out = []
    for (x1, y1, x2, y2), cls, score in zip(boxes_xyxy, classes, scores, strict=True):
        x1, y1, x2, y2 = float(x1), float(y1), float(x2), float(y2)
        out.append({"image_id": int(image_id), "category_id": int(category_ids[int(cls)]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return out


def score_split(gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]],
                threshold: float, backend: str = "faster",
                read_iou: float | None = None) -> tuple[CocoMetrics, float | None]:
    """COCO metrics of `detections` on `gt` and the whole-number accuracy at `threshold`, the
    numbers read with `read_iou` (None when the classes are not digits): what rcnnlab's
    evaluate computes on a split."""
    metrics = evaluate_detections(gt, detections, backend=backend)
    return metrics, SequenceAccuracy(threshold, read_iou).evaluate(gt, list(detections))


# ------------------------------------------------------------------------- network watch
def watch_network() -> list[str]:
    """Record every network attempt of this process from now on (Python audit events of socket
    connects, name look-ups and urllib requests); returns the list they are appended to."""
    seen: list[str] = []

    def hook(event: str, args: tuple) -> None:
        if event in NETWORK_EVENTS:
            # connect and sendto name the socket first, then the address
            target = args[1] if event in ("socket.connect", "socket.sendto") else args[0]
            seen.append(f"{event} {target!r}")

    sys.addaudithook(hook)  # hooks cannot be removed: the list lives as long as the process
    return seen


# ------------------------------------------------------------------------- YOLO
def offline_ultralytics(config_dir: Path) -> None:
    """Set Ultralytics up so that it never reaches the network; call before importing it.

    YOLO_OFFLINE makes its online check answer False without a DNS look-up (no update check, no
    analytics, no auto-install), YOLO_AUTOINSTALL=0 forbids pip installs, YOLO_CONFIG_DIR keeps
    its settings (sync off) out of the user's, and a font named Arial.ttf in that folder stops
    its dataset check from fetching Arial from GitHub (it asks even offline). OMP_NUM_THREADS
    is set to torch's threads because importing ultralytics sets it to 1 where it is unset.
    """
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    folder = config_dir / "Ultralytics"  # Ultralytics' USER_CONFIG_DIR under YOLO_CONFIG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    font = folder / "Arial.ttf"
    if not font.exists():
        import matplotlib

        shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf", font)
    from ultralytics import settings

    settings.update({"sync": False})


def train_yolo(data_yaml: Path, *, minutes: float, imgsz: int, batch: int,
               workers: int | None, seed: int, threads: int, epochs: int | None,
               out: Path, name: str | None = None) -> tuple[Path, float, int]:
    """Train YOLOv8n from scratch with Ultralytics' recipe for `minutes` of wall time; returns
    (its best.pt, the training call's wall seconds, epochs run)."""
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics import YOLO

    # Ultralytics sets torch's CPU threads to this constant (cpu_count - 1, at most 8) each time
    # it picks the device: give it the threads rcnnlab gets.
    torch_utils.NUM_THREADS = threads
    run = out / (name or f"yolo_s{seed}")
    if run.exists():  # Ultralytics appends to an existing results.csv: start clean
        shutil.rmtree(run)
    kwargs = dict(data=str(data_yaml), imgsz=imgsz, time=minutes / 60, batch=batch,
                  device="cpu", seed=seed, plots=False, pretrained=False,
                  project=str(out.resolve()), name=run.name, exist_ok=True)
    if workers is not None:
        kwargs["workers"] = workers
    if epochs is not None:
        kwargs["epochs"] = epochs
    model = YOLO("yolov8n.yaml")
    start = time.perf_counter()
    model.train(**kwargs)
    wall = time.perf_counter() - start
    save_dir = Path(model.trainer.save_dir)
    with (save_dir / "results.csv").open() as f:
        epochs_run = sum(1 for _ in csv.DictReader(f))
    return save_dir / "weights" / "best.pt", wall, epochs_run


def predict_yolo(weights: Path, data: CocoData, imgsz: int) -> tuple[list[dict], float]:
    """COCO results of a YOLO checkpoint on every image of `data`, in its category ids, and the
    images per second of that pass (after one warm-up batch)."""
    from ultralytics import YOLO

    model = YOLO(str(weights))
    paths = [str(data.image_root / img["file_name"]) for img in data.images]
    options = dict(conf=YOLO_CONF, iou=YOLO_IOU, max_det=MAX_DET, imgsz=imgsz, device="cpu",
                   verbose=False, batch=PREDICT_BATCH)
    model.predict(paths[:PREDICT_BATCH], **options)  # warm-up
    detections: list[dict] = []
    start = time.perf_counter()
    results = model.predict(paths, stream=True, **options)
    count = 0
    for img, result in zip(data.images, results, strict=True):
        boxes = result.boxes
        detections += yolo_detections(img["id"], boxes.xyxy.tolist(), boxes.cls.tolist(),
                                      boxes.conf.tolist(), data.category_ids)
        count += 1
    seconds = time.perf_counter() - start
    if count != len(paths):
        raise RuntimeError(f"YOLO returned {count} results for {len(paths)} images")
    return detections, len(paths) / seconds


def yolo_row(dataset: str, seed: int, imgsz: int, data_yaml: Path, splits: Splits,
             thresholds: Sequence[float], args: argparse.Namespace, threads: int,
             out: Path) -> Row:
    """Train one YOLO run, tune its threshold on valid (digits) and score it on test."""
    best, wall, epochs = train_yolo(data_yaml, minutes=args.minutes, imgsz=imgsz,
                                    batch=args.batch, workers=None, seed=seed, threads=threads,
                                    epochs=None, out=out, name=f"yolo{imgsz}_s{seed}")
    threshold, read_iou = None, None
    if splits.digits:
        read_iou = READ_IOU
        valid_dets, _ = predict_yolo(best, splits.valid, imgsz)
        sweep = sweep_thresholds(splits.valid.to_coco_dict(), valid_dets, thresholds,
                                 read_iou=read_iou)
        if warning := sweep.edge_warning():
            print(f"{dataset} yolo{imgsz} seed {seed}: {warning}", flush=True)
        threshold = sweep.best
    test_dets, predict_ips = predict_yolo(best, splits.test, imgsz)
    metrics, seq_acc = score_split(splits.test.to_coco_dict(), test_dets,
                                   threshold if threshold is not None else 0.5,
                                   read_iou=read_iou)
    return Row(dataset, f"yolov8n-{imgsz}", seed, wall / 60, epochs, metrics.AP, metrics.AP50,
               metrics.AP75, seq_acc if splits.digits else None, threshold,
               epochs * len(splits.train.images) / wall, predict_ips)


# ------------------------------------------------------------------------- rcnnlab
def rcnnlab_row(dataset: str, seed: int, config: str | None, overrides: list[str],
                splits: Splits) -> Row:
    """Train one rcnnlab run (the plan, or the recipe `config`), tune its threshold on valid
    (digits), evaluate it on test and time a prediction pass over the test images."""
    from rcnnlab import Detector, api

    cfg = api.configure(config, overrides)
    start = time.perf_counter()
    fit = api.train(cfg, exist_ok=True)  # a folder of an earlier attempt starts over
    wall = time.perf_counter() - start
    threshold = api.tune(fit.run_dir).best if splits.digits else None
    result = api.evaluate(fit.run_dir, split="test", threshold=threshold)
    detector = Detector.load(fit.run_dir)
    paths = [splits.test.image_root / img["file_name"] for img in splits.test.images]
    detector.predict(paths[:PREDICT_BATCH], keep_images=False)  # warm-up
    begin = time.perf_counter()
    detector.predict(paths, batch_size=PREDICT_BATCH, keep_images=False)
    predict_ips = len(paths) / (time.perf_counter() - begin)
    m = result.metrics
    label = "rcnnlab" if config is None else f"rcnnlab -c {config}"
    return Row(dataset, label, seed, wall / 60, fit.epochs, m.AP, m.AP50, m.AP75,
               result.seq_acc if splits.digits else None, threshold,
               fit.iterations * cfg.train.batch_size / wall, predict_ips)


# ------------------------------------------------------------------------- the table
def _cell(value: float | None, width: int, digits: int = 4) -> str:
    """A number right-aligned in `width`, "-" for None."""
    return f"{'-' if value is None else f'{value:.{digits}f}':>{width}}"


HEADER = (f"{'dataset':<10}{'detector':<18}{'seed':>5}{'wall min':>9}{'epochs':>7}{'mAP':>8}"
          f"{'AP50':>8}{'AP75':>8}{'seq acc':>8}{'thresh':>7}{'train/s':>9}{'pred/s':>8}")


def format_row(row: Row) -> str:
    """One table line."""
    return (f"{row.dataset:<10}{row.detector:<18}{row.seed:>5}{row.wall_min:>9.2f}"
            f"{row.epochs:>7}" + "".join(_cell(v, 8) for v in (row.mAP, row.AP50, row.AP75,
                                                                row.seq_acc))
            + _cell(row.threshold, 7, 2) + _cell(row.train_ips, 9, 2)
            + _cell(row.predict_ips, 8, 1))


def mean_std(values: Sequence[float | None]) -> str:
    """`mean±std` of the values (std over seeds, 0 for one; "-" when any is None)."""
    if not values or any(v is None for v in values):
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f}±{std:.3f}"


SUMMARY_KEYS = ("mAP", "AP50", "AP75", "seq_acc", "train_ips", "predict_ips")


def summary(rows: Sequence[Row]) -> list[str]:
    """mean ± std per dataset and detector over its seeds, then per dataset rcnnlab's mAP
    against YOLOv8n's better image size (by mean mAP)."""
    lines = [f"{'dataset':<10}{'detector':<18}{'n':>3}"
             + "".join(f"{k:>14}" for k in SUMMARY_KEYS)]
    for dataset in dict.fromkeys(r.dataset for r in rows):
        mine = [r for r in rows if r.dataset == dataset]
        for detector in dict.fromkeys(r.detector for r in mine):
            group = [r for r in mine if r.detector == detector]
            lines.append(f"{dataset:<10}{detector:<18}{len(group):>3}" + "".join(
                f"{mean_std([getattr(r, k) for r in group]):>14}" for k in SUMMARY_KEYS))
    lines.append("")
    for dataset in dict.fromkeys(r.dataset for r in rows):
        mine = [r for r in rows if r.dataset == dataset]
        means = {d: statistics.fmean(r.mAP or 0.0 for r in mine if r.detector == d)
                 for d in dict.fromkeys(r.detector for r in mine)}
        yolo = {d: v for d, v in means.items() if d.startswith("yolo")}
        if not yolo:
            continue
        best = max(yolo, key=yolo.get)
        for detector in (d for d in means if d.startswith("rcnnlab")):
            lead = means[detector] - yolo[best]
            lines.append(f"{dataset}: {detector} mAP {means[detector]:.3f} vs {best} (YOLO's "
                         f"better size) {yolo[best]:.3f}: {lead:+.3f}")
    return lines


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """The rows as CSV with a header."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fld.name for fld in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def parse_datasets(specs: Sequence[str], seeds: Sequence[int]) -> list[tuple[str, list[int]]]:
    """`NAME[:S,S,...]` -> (name, seeds); the seeds default to `seeds`."""
    out = []
    for spec in specs:
        name, _, given = spec.partition(":")
        if name not in DATASETS:
            raise SystemExit(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}")
        out.append((name, [int(s) for s in given.split(",")] if given else list(seeds)))
    return out


# ------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> list[Row]:
    """Run the comparison and return its rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["orand:0,1,2", "building", "numbers",
                                                          "synth"],
                        help=f"NAME[:SEEDS] of {', '.join(DATASETS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="seeds of a dataset given without its own")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="wall-clock training budget of each run (training + validation)")
    parser.add_argument("--only", choices=("rcnnlab", "yolo"), default=None)
    parser.add_argument("--config", action="append", default=[],
                        help="rcnnlab recipe to train (repeatable; `plan`, the default: no recipe)")
    parser.add_argument("--imgsz", type=int, nargs="+", default=[320, 640],
                        help="YOLO's image sizes (one row each)")
    parser.add_argument("--batch", type=int, default=16, help="YOLO's batch size")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of both sides (default: torch's)")
    parser.add_argument("--yolo-sweep", type=float, nargs=2, default=[0.05, 0.95],
                        metavar=("MIN", "MAX"), help="YOLO's threshold range (default 0.05-0.95)")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder")
    parser.add_argument("--out", type=Path, default=Path("runs/peer"))
    parser.add_argument("overrides", nargs="*", help="extra key=value for rcnnlab's runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    network = watch_network()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    from rcnnlab.config import load_config
    from rcnnlab.runs.environment import machine_description

    print(machine_description(), flush=True)
    have_yolo = importlib.util.find_spec("ultralytics") is not None
    if not have_yolo and args.only != "rcnnlab":
        print(NO_ULTRALYTICS, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    eval_cfg = load_config("base").eval
    yolo_thresholds = eval_cfg.model_copy(update={
        "sweep_min": args.yolo_sweep[0], "sweep_max": args.yolo_sweep[1]}).sweep_thresholds()

    rows: list[Row] = []
    for dataset, seeds in parse_datasets(args.datasets, args.seeds):
        out = args.out / dataset
        splits = DATASETS[dataset](args.shared, args.out)
        split_items = write_splits(splits, out / "splits")
        print(f"{dataset}: train {len(splits.train.images)}, valid {len(splits.valid.images)}, "
              f"test {len(splits.test.images)} images; {args.minutes:g} min a run; {threads} "
              "torch threads", flush=True)
        # rcnnlab first for every seed: Ultralytics changes process-wide torch state
        # (deterministic algorithms, threads) that must not leak into rcnnlab's runs
        if args.only != "yolo":
            for recipe in args.config or ["plan"]:
                for seed in seeds:
                    tag = Path(recipe).stem
                    config = None if recipe == "plan" else recipe
                    rows.append(rcnnlab_row(dataset, seed, config, rcnnlab_overrides(
                        split_items, minutes=args.minutes, seed=seed, out=out,
                        name=f"rcnnlab_{tag}_s{seed}", threads=args.threads,
                        extra=args.overrides), splits))
                    print(format_row(rows[-1]), flush=True)
        if args.only != "rcnnlab" and have_yolo:
            offline_ultralytics(args.out / "ultralytics")
            data_yaml = write_yolo_dataset(splits.train, splits.valid, out / "yolo")
            for imgsz in args.imgsz:
                for seed in seeds:
                    rows.append(yolo_row(dataset, seed, imgsz, data_yaml, splits,
                                         yolo_thresholds, args, threads, out))
                    print(format_row(rows[-1]), flush=True)
            torch.set_num_threads(threads)
        write_csv(rows, args.out / "peer.csv")

    print(f"\n{machine_description()}\n{HEADER}", flush=True)
    for row in rows:
        print(format_row(row))
    print("\nmean ± std over seeds")
    print("\n".join(summary(rows)))
    print(f"\nrows written to {args.out / 'peer.csv'}; network attempts: "
          + ("none" if not network else "; ".join(dict.fromkeys(network))), flush=True)
    return rows


if __name__ == "__main__":
    main()
