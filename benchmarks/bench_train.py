"""Train and inference throughput of a config on generated house numbers (CPU or GPU).

Prints one row per variant: train img/s (forward + backward + optimizer step, augmentation on,
data loading included), inference img/s (batched, as `rcnnlab predict` runs it) and the peak
memory of the process. Nothing is asserted; the figures go into the README.

    python benchmarks/bench_train.py                       # -c base
    python benchmarks/bench_train.py --variant "800px=model.native_size=false model.min_size=800"
    # the defaults against the CPU defaults before issue 14, on ORAND and 640x640 images:
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

Each variant's training step is the engine's own (`TrainLoop`: train.amp, the channels-last
backbone and the gradient clip as configured) and inference goes through `Predictor` with the
config's eval options (eval.amp included).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="base", help="a built-in recipe or a YAML file")
    parser.add_argument("--variant", action="append", default=[],
                        help='"label=key=value key=value" (repeatable); the config itself is '
                        "always measured as 'default'")
    parser.add_argument("--old", action="store_true",
                        help="also measure the CPU defaults before issue 14 ('old defaults')")
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

    with tempfile.TemporaryDirectory() as tmp:
        sources = [(load_coco(path), f"{Path(str(path).split(':')[0]).name}"
                    f" {str(path).partition('.yaml:')[2]}".strip()) for path in args.data]
        if not sources:
            generate_dataset(Path(tmp), n_train=args.images, n_valid=0, n_test=0, seed=0,
                             workers=2)
            sources = [(load_coco(Path(tmp) / "train" / "annotations.json"), "generated")]
        for data, name in sources:
            print(f"\n{name}: {len(data.images)} images, {data.num_boxes} boxes")
            print(f"{'variant':<14}{'arch':<16}{'train img/s':>12}{'infer img/s':>12}"
                  f"{'peak MB*':>10}")
            rows = {}
            for label, overrides, compiled in variants:
                cfg = load_config(args.config, overrides)
                r = rows[label] = measure(cfg, data, device, args.iters, args.warmup,
                                          args.infer_images, compile_backbone=compiled)
                print(f"{label:<14}{cfg.model.arch:<16}{r['train']:>12.2f}{r['infer']:>12.2f}"
                      f"{r['mem']:>10.0f}", flush=True)
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
