"""Where a training step and an inference pass spend their time, by phase, module and operator.

    python benchmarks/profile_step.py --config orand \
        --data ../shared/data/orand-car-a/instances_train.json [key=value ...]

Runs rcnnlab's own training step (`TrainLoop.run_step`: the config's model, augmentation,
train.amp and gradient clip) on the dataset's images at the config's size under torch.profiler,
after warm-up steps, then batched inference (`Predictor`, the config's eval options) on the
first images. Prints, per training step:

- phases: data loading, forward (with the losses), backward (with zero_grad and the gradient
  clip), optimizer step;
- modules: the forward time of each part of the detector, inclusive (the RPN includes its
  head; the RoI heads include RoIAlign, the box head and the predictor);
- operators: the top operators by self CPU time, forward and backward ops (`...Backward0`,
  `convolution_backward`) included, which is where backward time shows by part: the box head's
  FC layers are `addmm` / `AddmmBackward0`, RoIAlign `torchvision::roi_align` /
  `RoiAlignBackward0` (`torchvision::_roi_align_backward`), the convolutions
  `mkldnn_convolution` / `convolution_backward`.

and the same module and operator tables for inference. Nothing is asserted; the figures go into
the "where the time goes" table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.data import Subset

from rcnnlab.config import load_config
from rcnnlab.data.coco import CocoDetection, load_coco
from rcnnlab.data.transforms import to_model_input
from rcnnlab.engine.loop import HookBase, TrainLoop
from rcnnlab.engine.optim import build_scheduler
from rcnnlab.engine.precision import MixedPrecision
from rcnnlab.inference.detect import detect_dataset
from rcnnlab.inference.predictor import Predictor
from rcnnlab.runs.environment import machine_description
from step_timer import training_pieces  # benchmarks/, beside this script

# The detector's parts, as (label, attribute path); nested parts are indented in the table.
PARTS = [
    ("transform (normalise, resize, batch)", "transform"),
    ("backbone body", "backbone.body"),
    ("FPN", "backbone.fpn"),
    ("RPN", "rpn"),
    ("  RPN head (convs)", "rpn.head"),
    ("  anchors", "rpn.anchor_generator"),
    ("RoI heads", "roi_heads"),
    ("  RoIAlign", "roi_heads.box_roi_pool"),
    ("  box head", "roi_heads.box_head"),
    ("  box predictor", "roi_heads.box_predictor"),
]
PHASES = ["data", "forward", "backward", "optimizer"]


class _Span:
    """A profiler range opened and closed from two different hooks."""

    def __init__(self, name: str):
        self.name, self.range = name, None

    def open(self, *_args) -> None:
        self.range = record_function(self.name)
        self.range.__enter__()

    def close(self, *_args) -> None:
        if self.range is not None:
            self.range.__exit__(None, None, None)
            self.range = None


def _submodule(model: torch.nn.Module, path: str) -> torch.nn.Module | None:
    module = model
    for name in path.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def label_parts(model: torch.nn.Module) -> list:
    """Open a profiler range named after each part around its forward; returns the handles."""
    handles = []
    for label, path in PARTS:
        module = _submodule(model, path)
        if module is None:
            continue
        span = _Span("part: " + label.strip())
        handles.append(module.register_forward_pre_hook(span.open))
        handles.append(module.register_forward_hook(span.close))
    return handles


class PhaseLabels(HookBase):
    """Profiler ranges for the phases of TrainLoop's step, from its hook points: forward runs
    from the model's forward pre-hook to `adjust_loss`, backward from there to the optimizer's
    step pre-hook, the optimizer step to its post-hook, data loading from `after_step` to the
    next forward."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.spans = {p: _Span("phase: " + p) for p in PHASES}
        model.register_forward_pre_hook(self._forward)
        optimizer.register_step_pre_hook(self._optimizer)
        optimizer.register_step_post_hook(lambda *_: self.spans["optimizer"].close())

    def _forward(self, *_args) -> None:
        if torch.is_grad_enabled():  # training forwards only
            self.spans["data"].close()
            self.spans["forward"].open()

    def adjust_loss(self, outputs, loss):
        self.spans["forward"].close()
        self.spans["backward"].open()
        return loss

    def _optimizer(self, *_args) -> None:
        self.spans["backward"].close()
        self.spans["optimizer"].open()

    def after_step(self) -> None:
        self.spans["data"].open()

    def after_train(self) -> None:
        self.spans["data"].close()


def _table(events, prefix: str, names: list[str], steps: int, total_ms: float) -> Iterator[str]:
    by_key = {e.key: e for e in events}
    for name in names:
        event = by_key.get(prefix + name.strip())
        if event is None:
            continue
        ms = event.cpu_time_total / 1000 / steps
        yield f"  {name:<40}{ms:>10.1f}{100 * ms / total_ms:>8.1f}%"


def _operators(events, steps: int, total_ms: float, top: int) -> Iterator[str]:
    ops = [e for e in events if not e.key.startswith(("part: ", "phase: ", "ProfilerStep"))]
    ops.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    for e in ops[:top]:
        ms = e.self_cpu_time_total / 1000 / steps
        yield f"  {e.key[:56]:<56}{ms:>10.1f}{100 * ms / total_ms:>8.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    parser.add_argument("--config", default="orand",
                        help="a recipe, or plan (the plan for --data, as rcnnlab train plans)")
    parser.add_argument("--data", required=True, help="a COCO json (its images at the "
                        "config's size)")
    parser.add_argument("--steps", type=int, default=10, help="profiled training steps")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--infer-images", type=int, default=64)
    parser.add_argument("--top", type=int, default=15, help="operators listed")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.config == "plan":  # what rcnnlab train plans for the data, without a recipe
        from rcnnlab import api

        cfg = api.configure(None, [*api.data_overrides(args.data), *args.overrides])
    else:
        cfg = load_config(args.config, args.overrides)
    device = torch.device("cpu")
    data = load_coco(args.data)
    model, optimizer, loader = training_pieces(cfg, data, device)
    print(f"{machine_description()}; config {Path(args.config).name} {' '.join(args.overrides)}"
          f"; {Path(args.data).name}, batch {cfg.train.batch_size}, train.amp "
          f"{cfg.train.amp}, {args.warmup}+{args.steps} steps")

    def loop_of(steps: int, hooks: list[HookBase]) -> TrainLoop:
        return TrainLoop(model, loader, optimizer, build_scheduler(optimizer, cfg.train, steps),
                         epochs=1, iters_per_epoch=steps, device=device,
                         grad_clip=cfg.train.grad_clip, hooks=hooks,
                         precision=MixedPrecision(cfg.train.amp, device))

    loop_of(args.warmup, []).train_one_epoch()
    handles = label_parts(model)
    labels = PhaseLabels(model, optimizer)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loop = loop_of(args.steps, [labels])
        loop.train()
    wall = (time.perf_counter() - start) * 1000 / args.steps
    events = prof.key_averages()
    print(f"\ntraining step: {wall:.0f} ms wall a step under the profiler "
          f"({cfg.train.batch_size * 1000 / wall:.2f} img/s)")
    print(f"  {'phase':<40}{'ms/step':>10}{'share':>9}")
    print("\n".join(_table(events, "phase: ", PHASES, args.steps, wall)))
    print(f"  {'module (forward, inclusive)':<40}{'ms/step':>10}{'share':>9}")
    print("\n".join(_table(events, "part: ", [p for p, _ in PARTS], args.steps, wall)))
    print(f"  {'operator (self time)':<56}{'ms/step':>10}{'share':>9}")
    print("\n".join(_operators(events, args.steps, wall, args.top)))

    model.eval()
    predictor = Predictor(model, cfg.eval)
    test_set = Subset(CocoDetection(data, to_model_input()), range(args.infer_images))
    batch = cfg.eval.batch_size
    detect_dataset(predictor, Subset(test_set, range(batch)), data.category_ids, device=device,
                   batch_size=batch)  # warm-up
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        detect_dataset(predictor, test_set, data.category_ids, device=device, batch_size=batch)
    wall = (time.perf_counter() - start) * 1000
    events = prof.key_averages()
    print(f"\ninference: {len(test_set)} images in batches of {batch}, {wall:.0f} ms under the "
          f"profiler ({len(test_set) * 1000 / wall:.2f} img/s)")
    print(f"  {'module (inclusive)':<40}{'ms':>10}{'share':>9}")
    print("\n".join(_table(events, "part: ", [p for p, _ in PARTS], 1, wall)))
    print(f"  {'operator (self time)':<56}{'ms':>10}{'share':>9}")
    print("\n".join(_operators(events, 1, wall, args.top)))
    for handle in handles:
        handle.remove()


if __name__ == "__main__":
    main()
