"""rcnnlab against a peer detector: Ultralytics YOLOv8n from scratch, same data, same budget.

Trains Ultralytics YOLOv8n from scratch (the model built from `yolov8n.yaml`, no pretrained
weights) with Ultralytics' own recipe, and rcnnlab with its `--config` recipe, each for the same
wall-clock budget on the same images; then scores both on the same held-out split with the same
scorer and prints one row per detector and seed, then mean ± std per detector over the seeds.
Nothing is asserted: the script measures and prints.

The protocol (both detectors see exactly the same data):
* Source: ORAND-CAR-A's `instances_train.json` (`--data`; default
  `../shared/data/orand-car-a/instances_train.json` beside the repository).
* Held-out split: the valid split that rcnnlab's `--config` recipe (`orand`: 10 %, split seed 0)
  holds out of the source, 108 of 1,080 images, got with `rcnnlab.data.splits.load_splits`.
  The other 972 images are the training side.
* The training side is written to a json (`<work>/train_side.json`) and split again the way
  rcnnlab splits it when trained on it with `data.val_fraction=0.1`: ~875 training images and
  ~97 validation images. rcnnlab trains and validates on exactly these; so does YOLO, through a
  YOLO dataset written from them (`<work>/yolo/`: images symlinked, labels `class cx cy w h`
  normalised, class = the category's index in id order, names = the category names).
* Budget: rcnnlab `train.time_budget=<minutes>` (training + validation); YOLO `time=<minutes>/60`
  hours (Ultralytics stops then, validation included, and re-plans its epochs after the first).
  The `wall min` column is the wall time of each side's whole training call (data loading, the
  training, its validation, and for YOLO its final validation of best.pt). Both sides run on the
  same number of torch threads (`--threads`, default torch's): left alone, Ultralytics would
  train on the CPU with cpu_count - 1 threads, one of 2 here.
* YOLO: Ultralytics' default hyperparameters; set are only data, imgsz (640, Ultralytics' own),
  time, batch (16, its default), workers (on the CPU Ultralytics uses 0 whatever is given), the
  CPU device, the seed, plots=False, pretrained=False (from scratch), and the run folder.
  `epochs` is left at Ultralytics' default (100; `time=` overrides it, "re-estimated after the
  first epoch"): a large `epochs` would change what `optimizer=auto` picks (MuSGD at lr 0.01 past
  10,000 planned iterations, instead of AdamW at its fitted lr), i.e. the recipe itself.
* No download: Ultralytics runs with `YOLO_OFFLINE=1` (no online check, no update check, no
  analytics), `YOLO_AUTOINSTALL=0` (no pip installs), a private settings folder
  (`YOLO_CONFIG_DIR=<work>/ultralytics`, settings `sync=False`), and a font file in it named
  `Arial.ttf` (matplotlib's DejaVu Sans): its dataset check looks for that font and otherwise
  fetches it from GitHub even offline (plots=False never draws text). The script watches the
  process (a `sys.addaudithook`) and prints every network attempt it saw, or "none".
* Scoring, the same for both: `rcnnlab.evaluation.coco.evaluate_detections` on the 108 held-out
  images (COCO results in the held-out json's own image and category ids). YOLO predicts with
  Ultralytics' validation settings (conf=0.001, iou=0.7) and max_det=100. The sequence-accuracy
  threshold is tuned on the ~97 validation images (never the held-out ones) with
  `rcnnlab.evaluation.threshold.sweep_thresholds`, each detector over the range its user would
  sweep: rcnnlab over its recipe's `eval.sweep_min..max` (what `rcnnlab tune` does, 0.45-0.90),
  YOLO over `--yolo-sweep` (default 0.05-0.95: its confidences are lower, its best thresholds
  0.07-0.28 in the README's runs); `--sweep MIN MAX` sets one range for both. It is then
  applied to the held-out split. rcnnlab's row is `api.train`, `api.tune`,
  `api.evaluate(split="test")`.

    python benchmarks/peer_yolo.py                          # 10 minutes each, seeds 0 1 2
    python benchmarks/peer_yolo.py --minutes 0.5 --seeds 0 --out /tmp/peer_smoke
    python benchmarks/peer_yolo.py --only yolo --imgsz 320
    python benchmarks/peer_yolo.py --only rcnnlab train.batch_size=4    # rcnnlab overrides

Needs ultralytics (`pip install 'rcnnlab[peer]'`); without it the rcnnlab rows still run. Writes
the rows to `<out>/peer.csv`, the runs to `<out>/rcnnlab_s<seed>` and `<out>/yolo_s<seed>`.
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
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from rcnnlab.data.coco import CocoData
from rcnnlab.data.convert import write_coco
from rcnnlab.data.splits import load_splits
from rcnnlab.evaluation.coco import CocoMetrics, evaluate_detections
from rcnnlab.evaluation.pipeline import SequenceAccuracy
from rcnnlab.evaluation.threshold import sweep_thresholds

DEFAULT_DATA = (Path(__file__).resolve().parents[1].parent
                / "shared/data/orand-car-a/instances_train.json")
NO_ULTRALYTICS = "ultralytics is not installed: pip install 'rcnnlab[peer]'"
# Ultralytics' validation settings for the detections that are scored
YOLO_CONF, YOLO_IOU, MAX_DET = 0.001, 0.7, 100
NETWORK_EVENTS = frozenset({"socket.connect", "socket.getaddrinfo", "socket.gethostbyname",
                            "socket.gethostbyaddr", "socket.sendto", "urllib.Request"})


@dataclass
class Row:
    """One detector trained from one seed, scored on the held-out split."""

    detector: str
    seed: int
    wall_min: float  # wall time of the training call (training, validation, data loading)
    epochs: int
    mAP: float | None
    AP50: float | None
    AP75: float | None
    seq_acc: float | None
    threshold: float


# ------------------------------------------------------------------------- the data protocol
def heldout_split(source: str | Path, config: str, overrides: Sequence[str] = ()
                  ) -> dict[str, CocoData]:
    """The source split as rcnnlab's `config` recipe splits it: {"train": the training side,
    "valid": the held-out images} (orand: 972 and 108 of ORAND-CAR-A's 1,080)."""
    from rcnnlab.config import load_config

    cfg = load_config(config, [f"data.train_json={source}", *overrides])
    return load_splits(cfg.data, need=("train", "valid"))


def write_protocol(outer: Mapping[str, CocoData], work: Path) -> tuple[Path, Path, Path]:
    """Write the training side and the held-out split as COCO jsons into `work`: (train-side
    json, held-out json, their image folder). File names stay relative to the source's image
    folder (`load_coco` refuses absolute ones): give it as `data.*_images`."""
    train_side = write_coco(outer["train"].to_coco_dict(), work / "train_side.json")
    heldout = write_coco(outer["valid"].to_coco_dict(), work / "heldout.json")
    return train_side, heldout, outer["train"].image_root


def rcnnlab_overrides(train_side: Path, heldout: Path, images: Path, *, minutes: float,
                      seed: int, out: Path, sweep: Sequence[float] | None, threads: int | None,
                      workers: int | None, extra: Sequence[str] = ()) -> list[str]:
    """The overrides of rcnnlab's run: trained on the training side (10 % of it held out as
    valid, the threshold's tuning data), tested on the held-out json, for `minutes` of wall time;
    the threshold swept over `sweep` (None: the recipe's range); the user's `extra` last, so they
    win."""
    items = [f"data.train_json={train_side}", f"data.train_images={images}",
             "data.val_fraction=0.1", f"data.test_json={heldout}", f"data.test_images={images}",
             f"train.time_budget={minutes}", f"train.seed={seed}", f"out_dir={out}",
             f"name=rcnnlab_s{seed}"]
    if sweep is not None:
        items += [f"eval.sweep_min={sweep[0]}", f"eval.sweep_max={sweep[1]}"]
    if threads is not None:
        items.append(f"train.threads={threads}")
    if workers is not None:
        items.append(f"data.workers={workers}")
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
               out: Path) -> tuple[Path, float, int]:
    """Train YOLOv8n from scratch with Ultralytics' recipe for `minutes` of wall time; returns
    (its best.pt, the training call's wall seconds, epochs run)."""
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics import YOLO

    # Ultralytics sets torch's CPU threads to this constant (cpu_count - 1, at most 8) each time
    # it picks the device: give it the threads rcnnlab gets.
    torch_utils.NUM_THREADS = threads
    run = out / f"yolo_s{seed}"
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


def predict_yolo(weights: Path, data: CocoData, imgsz: int) -> list[dict]:
    """COCO results of a YOLO checkpoint on every image of `data`, in its category ids."""
    from ultralytics import YOLO

    model = YOLO(str(weights))
    paths = [str(data.image_root / img["file_name"]) for img in data.images]
    detections: list[dict] = []
    results = model.predict(paths, conf=YOLO_CONF, iou=YOLO_IOU, max_det=MAX_DET, imgsz=imgsz,
                            device="cpu", stream=True, verbose=False)
    count = 0
    for img, result in zip(data.images, results, strict=True):
        boxes = result.boxes
        detections += yolo_detections(img["id"], boxes.xyxy.tolist(), boxes.cls.tolist(),
                                      boxes.conf.tolist(), data.category_ids)
        count += 1
    if count != len(paths):
        raise RuntimeError(f"YOLO returned {count} results for {len(paths)} images")
    return detections


def yolo_row(seed: int, data_yaml: Path, valid: CocoData, heldout: CocoData,
             thresholds: Sequence[float], backend: str, read_iou: float | None,
             args: argparse.Namespace, threads: int) -> Row:
    """Train, tune on valid and score on the held-out split one YOLO run; its numbers are read
    as rcnnlab reads its own (`read_iou`)."""
    best, wall, epochs = train_yolo(data_yaml, minutes=args.minutes, imgsz=args.imgsz,
                                    batch=args.batch, workers=args.workers, seed=seed,
                                    threads=threads, epochs=args.yolo_epochs, out=args.out)
    sweep = sweep_thresholds(valid.to_coco_dict(), predict_yolo(best, valid, args.imgsz),
                             thresholds, backend=backend, read_iou=read_iou)
    if warning := sweep.edge_warning():
        print(f"yolo seed {seed}: {warning}", flush=True)
    metrics, seq_acc = score_split(heldout.to_coco_dict(),
                                   predict_yolo(best, heldout, args.imgsz), sweep.best, backend,
                                   read_iou)
    return Row("yolov8n", seed, wall / 60, epochs, metrics.AP, metrics.AP50, metrics.AP75,
               seq_acc, sweep.best)


# ------------------------------------------------------------------------- rcnnlab
def rcnnlab_row(seed: int, config: str, overrides: list[str]) -> Row:
    """Train, tune on valid and evaluate on the held-out (test) split one rcnnlab run."""
    from rcnnlab import api
    from rcnnlab.config import load_config

    cfg = load_config(config, overrides)
    start = time.perf_counter()
    fit = api.train(cfg, exist_ok=True)  # a folder of an earlier attempt starts over
    wall = time.perf_counter() - start
    sweep = api.tune(fit.run_dir)  # over eval.sweep_min..max, on valid (the ~97 images)
    result = api.evaluate(fit.run_dir, split="test", threshold=sweep.best)
    m = result.metrics
    return Row("rcnnlab", seed, wall / 60, fit.epochs, m.AP, m.AP50, m.AP75, result.seq_acc,
               result.threshold)


# ------------------------------------------------------------------------- the table
def _cell(value: float | None, width: int, digits: int = 4) -> str:
    """A number right-aligned in `width`, "-" for None."""
    return f"{'-' if value is None else f'{value:.{digits}f}':>{width}}"


def format_row(row: Row) -> str:
    """One table line."""
    return (f"{row.detector:<10}{row.seed:>6}{row.wall_min:>10.2f}{row.epochs:>8}"
            + "".join(_cell(v, 9) for v in (row.mAP, row.AP50, row.AP75, row.seq_acc))
            + f"{row.threshold:>11.2f}")


HEADER = (f"{'detector':<10}{'seed':>6}{'wall min':>10}{'epochs':>8}{'mAP':>9}{'AP50':>9}"
          f"{'AP75':>9}{'seq acc':>9}{'threshold':>11}")


def mean_std(values: Sequence[float | None]) -> str:
    """`mean±std` of the values (std over seeds, 0 for one; "-" when any is None)."""
    if not values or any(v is None for v in values):
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f}±{std:.3f}"


def summary(rows: Sequence[Row]) -> list[str]:
    """mean ± std per detector over its seeds, one line each."""
    lines = []
    for detector in dict.fromkeys(r.detector for r in rows):
        mine = [r for r in rows if r.detector == detector]
        cells = [mean_std([getattr(r, k) for r in mine])
                 for k in ("wall_min", "epochs", "mAP", "AP50", "AP75", "seq_acc", "threshold")]
        lines.append(f"{detector:<10}{f'n={len(mine)}':>6}" + "".join(f"{c:>14}" for c in cells))
    return lines


def write_csv(rows: Sequence[Row], path: Path) -> None:
    """The rows as CSV with a header."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fld.name for fld in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


# ------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> list[Row]:
    """Run the comparison and return its rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the source COCO json")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="wall-clock training budget of each run (training + validation)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", choices=("rcnnlab", "yolo"), default=None)
    parser.add_argument("--imgsz", type=int, default=640, help="YOLO's image size")
    parser.add_argument("--batch", type=int, default=16, help="YOLO's batch size")
    parser.add_argument("--workers", type=int, default=None,
                        help="data loader workers of both (default: each one's own)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of both sides (default: torch's)")
    parser.add_argument("--yolo-epochs", type=int, default=None,
                        help="YOLO's planned epochs before time= re-plans them (default: "
                        "Ultralytics' 100; it also picks optimizer=auto's choice)")
    parser.add_argument("--sweep", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="one threshold range tuned for both (default: rcnnlab's recipe "
                        "range, and --yolo-sweep for YOLO)")
    parser.add_argument("--yolo-sweep", type=float, nargs=2, default=[0.05, 0.95],
                        metavar=("MIN", "MAX"), help="YOLO's threshold range (default 0.05-0.95)")
    parser.add_argument("--out", type=Path, default=Path("runs/peer"))
    parser.add_argument("--work", type=Path, default=None,
                        help="folder of the split jsons and the YOLO dataset (default: a new "
                        "temporary folder in --out)")
    parser.add_argument("--config", default="orand", help="rcnnlab's recipe")
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
        if args.only == "yolo":
            return []
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="work-", dir=args.out))
    work.mkdir(parents=True, exist_ok=True)

    outer = heldout_split(args.data, args.config)
    train_side, heldout_json, images = write_protocol(outer, work)
    # rcnnlab's config for seed 0 gives its own training / validation split of the training
    # side (the split seed is the config's, not the run's): YOLO gets the same images
    common = dict(minutes=args.minutes, out=args.out, sweep=args.sweep, threads=args.threads,
                  workers=args.workers, extra=args.overrides)
    cfg = load_config(args.config, rcnnlab_overrides(train_side, heldout_json, images, seed=0,
                                                     **common))
    inner = load_splits(cfg.data, need=("train", "valid", "test"))
    yolo_sweep = args.sweep or args.yolo_sweep
    yolo_thresholds = cfg.eval.model_copy(update={"sweep_min": yolo_sweep[0],
                                                  "sweep_max": yolo_sweep[1]}).sweep_thresholds()
    print(f"source {len(outer['train'].images) + len(outer['valid'].images)} images: held out "
          f"{len(inner['test'].images)}; training side {len(outer['train'].images)} = "
          f"{len(inner['train'].images)} train + {len(inner['valid'].images)} valid; budget "
          f"{args.minutes:g} min a run; {threads} torch threads; threshold tuned on valid over "
          f"rcnnlab {cfg.eval.sweep_min:g}-{cfg.eval.sweep_max:g}, YOLO "
          f"{yolo_sweep[0]:g}-{yolo_sweep[1]:g}; work folder {work}", flush=True)

    rows: list[Row] = []
    # rcnnlab first for every seed: Ultralytics changes process-wide torch state (deterministic
    # algorithms, threads) that must not leak into rcnnlab's runs
    if args.only != "yolo":
        for seed in args.seeds:
            rows.append(rcnnlab_row(seed, args.config, rcnnlab_overrides(
                train_side, heldout_json, images, seed=seed, **common)))
            print(format_row(rows[-1]), flush=True)
    if args.only != "rcnnlab" and have_yolo:
        offline_ultralytics(work / "ultralytics")
        data_yaml = write_yolo_dataset(inner["train"], inner["valid"], work / "yolo")
        for seed in args.seeds:
            rows.append(yolo_row(seed, data_yaml, inner["valid"], inner["test"],
                                 yolo_thresholds, cfg.eval.backend,
                                 cfg.eval.read_iou, args, threads))
            print(format_row(rows[-1]), flush=True)
        torch.set_num_threads(threads)

    print(f"\n{machine_description()}\n{HEADER}", flush=True)
    for row in rows:
        print(format_row(row))
    print(f"\nmean ± std over seeds {args.seeds}\n{'detector':<10}{'':>6}"
          + "".join(f"{c:>14}" for c in ("wall min", "epochs", "mAP", "AP50", "AP75",
                                          "seq acc", "threshold")))
    print("\n".join(summary(rows)))
    write_csv(rows, args.out / "peer.csv")
    print(f"\nrows written to {args.out / 'peer.csv'}; network attempts: "
          + ("none" if not network else "; ".join(dict.fromkeys(network))), flush=True)
    return rows


if __name__ == "__main__":
    main()
