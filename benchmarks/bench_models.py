"""Training throughput of the detector archs on small house-number-sized images (CPU).

Each arch is built with ``build_model(native_size=True)`` (images stay at their native size),
then trained on one fixed synthetic batch (random pixels, 3-5 tall digit-shaped boxes per image)
with SGD: a few warm-up iterations, then timed iterations of forward + backward + optimizer step.

    python benchmarks/bench_models.py                      # defaults: 4 x 64x160, 2 threads
    python benchmarks/bench_models.py --threads 1 --archs resnet18_fpn

Note: the OpenMP runtime reads OMP_WAIT_POLICY when torch is imported. With 2 threads on 2 cores
and another busy process, spin-waiting threads can make each op wait a scheduler time slice;
compare with ``OMP_WAIT_POLICY=PASSIVE`` or ``--threads 1`` before trusting a slow figure.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from rcnnlab.models.architecture import ARCHS, build_model
from rcnnlab.models.description import describe_model

DEFAULT_ARCHS = [
    "fasterrcnn_mobilenet_v3_large_fpn",
    "resnet18_fpn",
    "resnet34_fpn",
    "resnet50_fpn",
]


def synthetic_batch(
    batch: int, height: int, width: int, num_classes: int, seed: int = 0
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Random images, each with 3-5 tall boxes placed left to right like a house number."""
    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch):
        images.append(torch.rand(3, height, width, generator=gen))
        n = int(torch.randint(3, 6, (1,), generator=gen))
        box_h = height * 0.7
        box_w = min(box_h * 0.5, width / n)
        y1 = (height - box_h) / 2
        boxes = [[i * box_w, y1, (i + 1) * box_w - 1, y1 + box_h] for i in range(n)]
        targets.append(
            {
                "boxes": torch.tensor(boxes),
                "labels": torch.randint(1, num_classes, (n,), generator=gen),
            }
        )
    return images, targets


def bench_arch(arch: str, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per training iteration (mean over the timed iterations) and parameter counts."""
    torch.manual_seed(0)
    model = build_model(
        arch=arch,
        num_classes=args.num_classes,
        native_size=True,
        residual_fpn=args.residual_fpn,
        box_batch_size_per_image=args.box_batch,
    )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    images, targets = synthetic_batch(args.batch, args.height, args.width, args.num_classes)

    def step() -> None:
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    seconds = (time.perf_counter() - start) / args.iters
    info = describe_model(model)
    return {
        "params_m": info["params_total"] / 1e6,
        "seconds": seconds,
        "img_per_s": args.batch / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=DEFAULT_ARCHS, choices=ARCHS)
    parser.add_argument("--batch", type=int, default=4, help="images per iteration")
    parser.add_argument("--height", type=int, default=64, help="image height, px")
    parser.add_argument("--width", type=int, default=160, help="image width, px")
    parser.add_argument("--num-classes", type=int, default=11, help="classes incl. background")
    parser.add_argument("--box-batch", type=int, default=128, help="box_batch_size_per_image")
    parser.add_argument("--residual-fpn", action="store_true", help="add residual FPN blocks")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; "
        f"batch {args.batch} x {args.height}x{args.width} native size, "
        f"box_batch_size_per_image={args.box_batch}, residual_fpn={args.residual_fpn}, "
        f"{args.warmup} warm-up + {args.iters} timed SGD iterations"
    )
    print(f"{'arch':<36}{'params (M)':>11}{'s/iter':>9}{'img/s':>8}")
    for arch in args.archs:
        r = bench_arch(arch, args)
        print(f"{arch:<36}{r['params_m']:>11.1f}{r['seconds']:>9.3f}{r['img_per_s']:>8.1f}")


if __name__ == "__main__":
    main()
