"""Time COCO box evaluation: faster-coco-eval vs pycocotools on a synthetic dataset.

Generates a ground truth of N images (1-5 boxes each, 10 classes with ids 0..9, box sizes spread
over COCO's small / medium / large ranges) and detections derived from it (~1.5x as many boxes:
jittered copies, some with a wrong class, plus false positives; random scores), then times
``evaluate_detections`` with each backend and checks that the 12 stats agree.

    .venv/bin/python benchmarks/bench_coco_eval.py --images 10000 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rcnnlab.evaluation.coco import STAT_NAMES, CocoMetrics, evaluate_detections

IMAGE_W, IMAGE_H = 640, 480
NUM_CLASSES = 10


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """n xywh boxes inside the image, sides log-uniform in 8..300 px so every COCO size occurs."""
    sides = np.exp(rng.uniform(np.log(8), np.log(300), size=(n, 1)))
    aspect = np.exp(rng.uniform(-0.5, 0.5, size=(n, 1)))
    wh = np.concatenate([sides * aspect, sides / aspect], axis=1).clip(2, [IMAGE_W, IMAGE_H])
    xy = rng.uniform(0, 1, size=(n, 2)) * ([IMAGE_W, IMAGE_H] - wh)
    return np.concatenate([xy, wh], axis=1)


def synthetic_dataset(num_images: int, seed: int) -> tuple[dict, list[dict]]:
    """(COCO ground truth, COCO results) for ``num_images`` images; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, size=num_images)
    image_of = np.repeat(np.arange(num_images), counts)
    gt_boxes = _random_boxes(rng, len(image_of))
    gt_cats = rng.integers(0, NUM_CLASSES, size=len(image_of))
    gt = {
        "images": [{"id": i, "width": IMAGE_W, "height": IMAGE_H} for i in range(num_images)],
        "categories": [{"id": c, "name": str(c)} for c in range(NUM_CLASSES)],
        "annotations": [
            {"id": i + 1, "image_id": int(img), "category_id": int(cat), "bbox": box.tolist()}
            for i, (img, cat, box) in enumerate(zip(image_of, gt_cats, gt_boxes, strict=True))
        ],
    }

    # True-ish detections: a jittered copy of 90% of the gt boxes, a second one of 30%.
    copies = np.concatenate(
        [
            np.flatnonzero(rng.random(len(image_of)) < 0.9),
            np.flatnonzero(rng.random(len(image_of)) < 0.3),
        ]
    )
    wh = np.tile(gt_boxes[copies, 2:], 2)  # jitter in proportion to the box's own size
    boxes = gt_boxes[copies] + rng.normal(0, 0.08, size=(len(copies), 4)) * wh
    boxes[:, 2:] = boxes[:, 2:].clip(1)
    cats = np.where(
        rng.random(len(copies)) < 0.9,
        gt_cats[copies],
        rng.integers(0, NUM_CLASSES, size=len(copies)),
    )
    # False positives bring the total to ~1.5x the number of gt boxes.
    n_fp = max(int(1.5 * len(image_of)) - len(copies), 0)
    det_image = np.concatenate([image_of[copies], rng.integers(0, num_images, size=n_fp)])
    det_cats = np.concatenate([cats, rng.integers(0, NUM_CLASSES, size=n_fp)])
    det_boxes = np.concatenate([boxes, _random_boxes(rng, n_fp)])
    scores = rng.random(len(det_image))
    detections = [
        {"image_id": int(img), "category_id": int(cat), "bbox": box.tolist(), "score": float(s)}
        for img, cat, box, s in zip(det_image, det_cats, det_boxes, scores, strict=True)
    ]
    return gt, detections


def _time(
    gt: dict, detections: list[dict], backend: str, repeats: int
) -> tuple[float, CocoMetrics]:
    """Best wall time over ``repeats`` runs of evaluate_detections, and its metrics."""
    best, metrics = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        metrics = evaluate_detections(gt, detections, backend=backend)
        best = min(best, time.perf_counter() - start)
    return best, metrics


def _max_stat_difference(a: CocoMetrics, b: CocoMetrics) -> float:
    """Largest absolute difference over the 12 stats (None must match None)."""
    diffs = []
    for name in STAT_NAMES:
        x, y = getattr(a, name), getattr(b, name)
        if (x is None) != (y is None):
            return float("inf")
        diffs.append(0.0 if x is None else abs(x - y))
    return max(diffs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000, help="number of images (10000)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        choices=(1, 2, 3),
        help="time each backend this many times and keep the best (1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the dataset (0)")
    args = parser.parse_args()

    gt, detections = synthetic_dataset(args.images, args.seed)
    print(
        f"{args.images} images, {len(gt['annotations'])} gt boxes, "
        f"{len(detections)} detections, best of {args.repeats}"
    )
    results = {b: _time(gt, detections, b, args.repeats) for b in ("faster", "pycocotools")}

    reference_s = results["pycocotools"][0]
    columns = ("AP", "AP50", "APs", "APm", "APl")
    header = " ".join(f"{c:>7}" for c in columns)
    print(f"\n{'backend':<12} {'seconds':>8} {'speedup':>8} {header}")
    for backend, (seconds, m) in results.items():
        values = " ".join(
            f"{'n/a' if v is None else f'{v:.4f}':>7}" for v in (getattr(m, c) for c in columns)
        )
        print(f"{backend:<12} {seconds:8.2f} {reference_s / seconds:7.1f}x {values}")
    diff = _max_stat_difference(results["faster"][1], results["pycocotools"][1])
    verdict = "agree" if diff <= 1e-12 else "DISAGREE"
    print(f"\nmax |difference| over the 12 stats: {diff:.1e} ({verdict})")


if __name__ == "__main__":
    main()
