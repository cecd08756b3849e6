"""GPU training and inference throughput of Faster R-CNN in rcnnlab's engine: one command.

    python benchmarks/bench_gpu.py              # one GPU: fp32 vs bf16 + channels-last (+ EMA)
    python benchmarks/bench_gpu.py --ddp 4      # and the scaling over 4 GPUs (torch.distributed)

The model is torchvision's `fasterrcnn_resnet50_fpn_v2` (91 COCO classes) at 800 px, batch 8
per GPU, on COCO-like generated images (640x480, 7 boxes of random classes and sizes, kept in
memory so the data pipeline is not what is measured). Training runs through rcnnlab's own
`TrainLoop` with torchvision's reference recipe (SGD, lr 0.02, momentum 0.9, weight decay 1e-4,
no gradient clip); each variant prints train img/s, peak GPU memory and inference img/s:

- fp32: torchvision-reference settings;
- bf16+cl: train.amp=bf16 and train.channels_last (eval.amp=bf16 for inference);
- bf16+cl+ema: the same with the weight average updated after every step (its cost).

With `--ddp N` the bf16+cl variant also runs on N processes (NCCL; gloo on the CPU) with batch
8 each: total img/s and the scaling efficiency against N x one GPU. Nothing is asserted. On a
machine without CUDA it runs on the CPU (use --size 320 --iters 2 for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset

from rcnnlab.config import TrainConfig
from rcnnlab.data.coco import collate
from rcnnlab.data.samplers import ShardedSampler
from rcnnlab.engine.hooks.ema import WeightAverage
from rcnnlab.engine.loop import HookBase, TrainLoop
from rcnnlab.engine.optim import build_optimizer, build_scheduler
from rcnnlab.engine.precision import MixedPrecision
from rcnnlab.inference.predictor import Predictor
from rcnnlab.models.architecture import build_model
from rcnnlab.runs.device import resolve_device
from rcnnlab.runs.environment import machine_description
from step_timer import StepTimer  # benchmarks/, beside this script

VARIANTS = {  # name: (train.amp, channels_last, EMA)
    "fp32": ("off", False, False),
    "bf16+cl": ("bf16", True, False),
    "bf16+cl+ema": ("bf16", True, True),
}


class CocoLike(Dataset):
    """Generated 640x480 images with 7 boxes each, drawn once and kept in memory."""

    def __init__(self, n: int, size: tuple[int, int] = (480, 640), classes: int = 90):
        g = torch.Generator().manual_seed(0)
        h, w = size
        self.items = []
        for i in range(n):
            # smooth colour fields: a low-resolution draw upsampled, as real images are smooth
            low = torch.rand(1, 3, h // 16, w // 16, generator=g)
            image = torch.nn.functional.interpolate(low, size=size, mode="bilinear")[0]
            xy = torch.rand(7, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
            wh = (0.05 + torch.rand(7, 2, generator=g) * 0.25) * torch.tensor([w, h])
            boxes = torch.cat([xy, xy + wh], dim=1)
            labels = torch.randint(1, classes + 1, (7,), generator=g)
            self.items.append((image, {"boxes": boxes, "labels": labels, "image_id": i}))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def train_speed(variant: str, args, device: torch.device, world: tuple[int, int] = (0, 1)):
    """img/s of this process and peak memory (MB) for one variant."""
    amp, channels_last, ema = VARIANTS[variant]
    rank, size = world
    torch.manual_seed(0)
    model = build_model(arch="fasterrcnn_resnet50_fpn_v2", num_classes=91, min_size=args.size,
                        max_size=args.size * 1333 // 800).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = model
    if size > 1:
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    cfg = TrainConfig(optimizer="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4,
                      warmup_iters=0, batch_size=args.batch, grad_clip=None)
    steps = args.warmup + args.iters
    data = CocoLike(args.batch * size * 2)
    sampler = ShardedSampler(torch.utils.data.RandomSampler(
        data, generator=torch.Generator().manual_seed(0)), rank, size)
    loader = DataLoader(data, batch_size=args.batch, sampler=sampler, collate_fn=collate)
    optimizer = build_optimizer(model, cfg)
    timer = StepTimer(args.warmup, device)
    hooks: list[HookBase] = [timer]
    if ema:
        hooks.insert(0, WeightAverage(model, decay=0.9998, warmup=2000))
    loop = TrainLoop(model, loader, optimizer, build_scheduler(optimizer, cfg, steps),
                     epochs=steps, iters_per_epoch=len(loader), device=device, grad_clip=None,
                     hooks=hooks, precision=MixedPrecision(amp, device), forward=forward,
                     world_size=size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    while loop.iteration < steps:
        loop.train_one_epoch()
    ips = timer.images_per_s()
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return ips, mem, model


@torch.inference_mode()
def infer_speed(model, amp: str, args, device: torch.device) -> float:
    """Inference img/s, batches of `--batch` images."""
    model.eval()
    predictor = Predictor(model, amp=amp)
    images = [img.to(device) for img, _ in CocoLike(args.batch).items]
    predictor(images)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.infer_batches):
        predictor(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.infer_batches * len(images) / (time.perf_counter() - start)


def _ddp_worker(rank: int, size: int, port: int, args, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if cuda else "gloo", rank=rank,
                                         world_size=size)
    ips, mem, _ = train_speed("bf16+cl", args, device, (rank, size))
    total = torch.tensor([ips], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    if rank == 0:
        out.put((total.item(), mem))
    torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=800, help="short side (px)")
    parser.add_argument("--batch", type=int, default=8, help="images per GPU")
    parser.add_argument("--iters", type=int, default=30, help="timed training iterations")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--infer-batches", type=int, default=10)
    parser.add_argument("--ddp", type=int, default=0, help="also measure N processes")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{machine_description()}; {name}")
    print(f"fasterrcnn_resnet50_fpn_v2 at {args.size} px, batch {args.batch}, "
          f"{args.warmup}+{args.iters} iterations")
    print(f"{'variant':<14}{'train img/s':>12}{'peak MB':>10}{'infer img/s':>13}")
    single = {}
    for variant, (amp, _, ema) in VARIANTS.items():
        ips, mem, model = train_speed(variant, args, device)
        single[variant] = ips
        infer = "" if ema else f"{infer_speed(model, amp, args, device):>13.2f}"
        mem_text = f"{mem:>10.0f}" if device.type == "cuda" else f"{'n/a':>10}"
        print(f"{variant:<14}{ips:>12.2f}{mem_text}{infer}", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.ddp:
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_ddp_worker, args=(args.ddp, port, args, out), nprocs=args.ddp, join=True)
        total, mem = out.get()
        peak = f", peak {mem:.0f} MB on rank 0" if device.type == "cuda" else ""
        print(f"bf16+cl on {args.ddp} processes: {total:.2f} img/s in all{peak}, scaling "
              f"{total / (args.ddp * single['bf16+cl']):.0%} "
              f"of {args.ddp} x one process")


if __name__ == "__main__":
    main()
