"""Prediction speed and accuracy of a trained run on its validation split, per backend.

    python benchmarks/bench_predict.py runs/orand [--onnx FILE.onnx] [--proposals 30]

Prints, for eager PyTorch fp32, eager bf16 autocast (`eval.amp=bf16`), and the run exported
(to RUN/export/bench_*) and run by ONNX Runtime, TorchScript and OpenVINO (its IR; each when
its extra is installed):
img/s at batch 1 and batch 8, the split's COCO mAP (of the batch-1 detections), and the peak
resident memory of the process after each; then how closely each exported runtime's
detections match the eager ones (a partner with the same label, IoU >= 0.99 and a score within
1e-3), both one image at a time (in a batch the eager model pads images to a common size,
which moves low-score boxes a little). Nothing is asserted. The exported graph takes one image
per run, so its "batch 8" is eight runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rcnnlab import Detector
from rcnnlab.data.splits import load_splits
from rcnnlab.evaluation.coco import evaluate_detections
from rcnnlab.export import parity
from rcnnlab.inference.sources import coco_images
from rcnnlab.runs.device import peak_memory_mb
from rcnnlab.runs.environment import machine_description


def run_backend(det: Detector, images, batch: int) -> tuple[float, list]:
    """img/s over `images` at `batch`, and the results."""
    det.predict(images[:batch], batch_size=batch, keep_images=False)  # warm-up
    start = time.perf_counter()
    results = det.predict(images, batch_size=batch, keep_images=False)
    return len(images) / (time.perf_counter() - start), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--onnx", default=None, help="an exported .onnx for ONNX Runtime "
                        "(default: export one)")
    parser.add_argument("--images", type=int, default=None, help="first N validation images")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", default=None, help="measure this backend alone (runtimes "
                        "in one process compete for the cores: ONNX Runtime's threads spin)")
    parser.add_argument("--proposals", type=int, default=None,
                        help="eval.proposals for every backend (the ONNX graph is exported "
                        "with it)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    extra = [f"eval.proposals={args.proposals}"] if args.proposals else []
    det = Detector.load(args.run, device="cpu", overrides=["eval.amp=off", *extra])
    data = load_splits(det.cfg.data, need=("valid",))["valid"]
    images = [item.image for item in coco_images(data)][: args.images]
    ids = [img["id"] for img in data.images][: len(images)]
    gt = data.to_coco_dict()
    gt["images"] = [img for img in gt["images"] if img["id"] in set(ids)]
    proposals = det.cfg.eval.proposals or det.cfg.model.rpn_post_nms_top_n_test
    print(f"{machine_description()}; {Path(args.run).name} valid, {len(images)} images at "
          f"native size; {proposals} proposals an image")
    print(f"{'backend':<22}{'img/s b1':>10}{'img/s b8':>10}{'mAP':>9}{'peak MB*':>10}")
    backends = {"eager fp32": det,
                "eager bf16": Detector.load(args.run, device="cpu",
                                            overrides=["eval.amp=bf16", *extra])}
    folder = Path(args.run) / "export"
    exports = {"onnxruntime": "onnx", "torchscript": "torchscript", "openvino": "openvino"}
    for name, fmt in exports.items():
        if args.only and name != args.only:
            continue  # not measured: not exported either
        try:  # each format's extra is optional: say why a row is missing
            if name == "onnxruntime" and args.onnx:
                path = Path(args.onnx)
            else:
                path = Detector.load(args.run, device="cpu", overrides=extra).export(
                    fmt, folder / f"bench_{fmt}")
            backends[name] = Detector.load(path, backend=name)
        except Exception as exc:
            print(f"({name} skipped: {exc})")
    if args.only:
        backends = {k: v for k, v in backends.items() if k == args.only}
    results = {}
    for name, backend in backends.items():
        b1, res = run_backend(backend, images, 1)
        results[name] = res  # one image at a time: no padding to a batch's size
        b8, _ = run_backend(backend, images, 8)
        dets = [d for r, i in zip(res, ids, strict=True) for d in r.to_coco(i)]
        ap = evaluate_detections(gt, dets).AP
        print(f"{name:<22}{b1:>10.2f}{b8:>10.2f}{ap:>9.4f}{peak_memory_mb(det.device):>10.0f}",
              flush=True)
    print("* peak resident memory of the process so far")
    for name in ("onnxruntime", "torchscript", "openvino"):
        if name in results and "eager fp32" in results:
            matched, total = parity(results["eager fp32"], results[name])
            print(f"{name} vs eager: {matched} of {total} detections matched "
                  f"({100 * matched / max(total, 1):.2f}%)")


if __name__ == "__main__":
    main()
