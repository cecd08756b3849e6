"""Train and inference throughput of a config on generated house numbers (CPU or GPU).

Prints one row per variant: train img/s (forward + backward + optimizer step, augmentation on,
data loading included), inference img/s (batched, as `rcnnlab predict` runs it) and the peak
memory of the process. Nothing is asserted; the figures go into docs/benchmarks.md.

    python benchmarks/bench_train.py                       # -c base
    python benchmarks/bench_train.py --variant "800px=model.native_size=false model.min_size=800"
    # the defaults against the previous CPU defaults (old_defaults.py), on ORAND and 640x640 images:
    python benchmarks/bench_train.py --old \
        --data ../shared/data/orand-car-a/instances_train.json \
        --data ../shared/data/number-extraction-yolo/data.yaml:val
    # the backbone and FPN under torch.compile, against eager:
    python benchmarks/bench_train.py --config orand --compile --warmup 10 \
        --data ../shared/data/orand-car-a/instances_train.json
    # fp32 vs bf16 (training and inference) on the ORAND images at their native size:
    python benchmarks/bench_train.py --config orand \
        --data ../shared/data/orand-car-a/instances_train.json \
        --variant "bf16=train.amp=bf16 eval.amp=bf16"
    # the plan rcnnlab train makes for each set, against YOLOv8n at 320 and 640 px:
    python benchmarks/bench_train.py --config plan --yolo 640 --yolo 320 \
        --data ../shared/data/building-characters-yolo/data.yaml:train \
        --data ../shared/data/number-extraction-yolo/data.yaml:val

Each variant's training step is the engine's own (`TrainLoop`: train.amp, the channels-last
backbone and the gradient clip as configured) and inference goes through `Predictor` with the
config's eval options (eval.amp included). `--config plan` measures, on each data source, the
config `rcnnlab train` plans for it without a recipe. `--yolo IMGSZ` adds a row of Ultralytics'
YOLOv8n from scratch at that image size on the same images (its own recipe, batch 16): its
training steps timed by a callback after the same warm-up, its prediction in batches of 8
(the `peer` extra).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from old_defaults import OLD_DEFAULTS  # benchmarks/, beside this script
from rcnnlab.config import load_config
from rcnnlab.data.coco import CocoDetection, load_coco
from rcnnlab.data.synth import generate_dataset
from rcnnlab.data.transforms import to_model_input
from rcnnlab.engine.loop import TrainLoop
from rcnnlab.engine.optim import build_scheduler
from rcnnlab.engine.precision import MixedPrecision
from rcnnlab.inference.detect import detect_dataset
from rcnnlab.inference.predictor import Predictor
from rcnnlab.runs.device import peak_memory_mb, resolve_device
from rcnnlab.runs.environment import machine_description
from step_timer import StepTimer, training_pieces


def measure(cfg, data, device, iters: int, warmup: int, infer_images: int,
            compile_backbone: bool = False) -> dict:
    """Time `iters` training iterations after `warmup`, then batched inference. With
    `compile_backbone` the backbone and FPN run under `torch.compile(dynamic=True)` (the
    warm-up iterations, whose time is returned as `warmup_s`, pay for compiling)."""
    model, optimizer, loader = training_pieces(cfg, data, device)
    if compile_backbone:
        model.backbone = torch.compile(model.backbone, dynamic=True)
    started = time.perf_counter()
    timer = StepTimer(warmup, device)
    steps = warmup + iters
    loop = TrainLoop(model, loader, optimizer, build_scheduler(optimizer, cfg.train, steps),
                     epochs=-(-steps // len(loader)), iters_per_epoch=min(steps, len(loader)),
                     device=device, grad_clip=cfg.train.grad_clip, hooks=[timer],
                     precision=MixedPrecision(cfg.train.amp, device))
    while loop.iteration < steps:
        loop.train_one_epoch()
    train_ips = timer.images_per_s()
    warmup_s = timer.start - started

    test_set = CocoDetection(data, to_model_input())
    subset = torch.utils.data.Subset(test_set, range(min(infer_images, len(test_set))))
    model.eval()
    predictor = Predictor(model, cfg.eval)
    detect_dataset(predictor, torch.utils.data.Subset(test_set, range(cfg.eval.batch_size)),
                   data.category_ids, device=device, batch_size=cfg.eval.batch_size)  # warm-up
    start = time.perf_counter()
    detect_dataset(predictor, subset, data.category_ids, device=device,
                   batch_size=cfg.eval.batch_size)
    infer_ips = len(subset) / (time.perf_counter() - start)
    return {"train": train_ips, "infer": infer_ips, "mem": peak_memory_mb(device),
            "warmup_s": warmup_s}


def measure_yolo(data, imgsz: int, iters: int, warmup: int, infer_images: int, work: Path,
                 threads: int) -> dict:
    """YOLOv8n from scratch (Ultralytics' recipe, batch 16) on `data` at `imgsz`: training
    steps timed after `warmup` (between the ends of batches, epoch ends left out), then
    prediction of `infer_images` images in batches of 8."""
    from peer_yolo import PREDICT_BATCH, offline_ultralytics, write_yolo_dataset

    offline_ultralytics(work / "ultralytics")  # before Ultralytics is imported
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics import YOLO

    torch_utils.NUM_THREADS = threads
    work = Path(tempfile.mkdtemp(prefix=f"yolo{imgsz}-", dir=work))  # a dataset of its own
    data_yaml = write_yolo_dataset(data, data, work / "yolo")
    batch = 16
    per_epoch = max(1, len(data.images) // batch)
    ends: list[tuple[int, float]] = []  # (epoch, time) at the end of each batch

    def on_batch_end(trainer) -> None:
        ends.append((trainer.epoch, time.perf_counter()))

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_batch_end", on_batch_end)
    model.train(data=str(data_yaml), imgsz=imgsz, batch=batch, device="cpu", seed=0,
                plots=False, pretrained=False, val=False, project=str(work / "yolo_runs"),
                name=f"bench{imgsz}", exist_ok=True, verbose=False,
                epochs=-(-(warmup + iters + 1) // per_epoch))
    steps = [b - a for (ea, a), (eb, b) in zip(ends, ends[1:], strict=False) if ea == eb][warmup:]
    steps = steps[:iters] or steps
    paths = [str(data.image_root / img["file_name"]) for img in data.images][:infer_images]
    trained = YOLO(str(work / "yolo_runs" / f"bench{imgsz}" / "weights" / "last.pt"))
    options = dict(imgsz=imgsz, device="cpu", verbose=False, batch=PREDICT_BATCH)
    trained.predict(paths[:PREDICT_BATCH], **options)  # warm-up
    start = time.perf_counter()
    for _ in trained.predict(paths, stream=True, **options):
        pass
    infer = len(paths) / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    return {"train": batch * len(steps) / sum(steps), "infer": infer,
            "mem": peak_memory_mb(torch.device("cpu")), "warmup_s": 0.0}


def config_for(config: str, path: str | None, overrides: list[str]):
    """The config of a row: the recipe with the overrides, or with `plan` the plan for the data
    `path` (as `rcnnlab train` without -c)."""
    if config != "plan":
        return load_config(config, overrides)
    from rcnnlab import api

    return api.configure(None, [*api.data_overrides(path), *overrides] if path else overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="base",
                        help="a built-in recipe, a YAML file, or plan (the plan for each data "
                        "source, as rcnnlab train without -c)")
    parser.add_argument("--variant", action="append", default=[],
                        help='"label=key=value key=value" (repeatable); the config itself is '
                        "always measured as 'default'")
    parser.add_argument("--old", action="store_true",
                        help="also measure the previous CPU defaults, old_defaults.py "
                        "('old defaults')")
    parser.add_argument("--images", type=int, default=256, help="generated training images")
    parser.add_argument("--data", action="append", default=[],
                        help="a COCO json, or a YOLO data.yaml[:split], to measure on instead "
                        "of generated images (repeatable: one table each)")
    parser.add_argument("--iters", type=int, default=20, help="timed training iterations")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--infer-images", type=int, default=128)
    parser.add_argument("--compile", action="store_true",
                        help="also measure the config with its backbone and FPN under "
                        "torch.compile ('compiled'; its warm-up time is printed)")
    parser.add_argument("--yolo", type=int, action="append", default=[],
                        help="also YOLOv8n from scratch at this image size (repeatable; needs "
                        "ultralytics)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    variants = [("old defaults", list(OLD_DEFAULTS), False)] if args.old else []
    variants.append(("default", [], False))
    if args.compile:
        variants.append(("compiled", [], True))
    for spec in args.variant:
        label, _, rest = spec.partition("=")
        variants.append((label, rest.split(), False))
    print(f"{machine_description()}, device {device}; config {Path(args.config).name}; "
          f"{args.warmup}+{args.iters} training iterations")

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        sources = [(load_coco(path), f"{Path(str(path).split(':')[0]).name}"
                    f" {str(path).partition('.yaml:')[2]}".strip(), str(path))
                   for path in args.data]
        if not sources:
            generate_dataset(Path(tmp), n_train=args.images, n_valid=0, n_test=0, seed=0,
                             workers=2)
            generated = Path(tmp) / "train" / "annotations.json"
            sources = [(load_coco(generated), "generated", str(generated))]
        for data, name, path in sources:
            print(f"\n{name}: {len(data.images)} images, {data.num_boxes} boxes")
            print(f"{'variant':<14}{'arch':<16}{'train img/s':>12}{'infer img/s':>12}"
                  f"{'peak MB*':>10}")
            rows = {}
            for label, overrides, compiled in variants:
                cfg = config_for(args.config, path, overrides)
                r = rows[label] = measure(cfg, data, device, args.iters, args.warmup,
                                          args.infer_images, compile_backbone=compiled)
                size = (f" ({cfg.model.max_size} px)" if cfg.model.max_size < 800 else "")
                print(f"{label:<14}{cfg.model.arch:<16}{r['train']:>12.2f}{r['infer']:>12.2f}"
                      f"{r['mem']:>10.0f}{size}", flush=True)
            for imgsz in args.yolo:
                label = f"yolov8n {imgsz}"
                r = rows[label] = measure_yolo(data, imgsz, args.iters, args.warmup,
                                               args.infer_images, Path(tmp), threads)
                print(f"{label:<14}{'(Ultralytics)':<16}{r['train']:>12.2f}{r['infer']:>12.2f}"
                      f"{r['mem']:>10.0f}", flush=True)
            for imgsz in args.yolo:
                yolo = rows[f"yolov8n {imgsz}"]
                ours = rows["default"]
                print(f"default / yolov8n {imgsz}: train x{ours['train'] / yolo['train']:.2f}, "
                      f"inference x{ours['infer'] / yolo['infer']:.2f}")
            if args.compile:
                print(f"warm-up ({args.warmup} iterations): default "
                      f"{rows['default']['warmup_s']:.1f} s, compiled "
                      f"{rows['compiled']['warmup_s']:.1f} s")
            if args.old:
                old, new = rows["old defaults"], rows["default"]
                print(f"default / old defaults: train x{new['train'] / old['train']:.2f}, "
                      f"inference x{new['infer'] / old['infer']:.2f}")
        print("* peak resident memory of the process so far (CPU) or peak CUDA allocation")


if __name__ == "__main__":
    main()
