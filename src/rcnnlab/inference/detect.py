"""Batched detection: a dataset of images (a COCO split, image files) -> COCO detections
(image_id, category_id in the dataset's own ids, bbox xywh, score)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from rcnnlab.inference.predictor import Predictor


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def detections_to_coco(output: dict, image_id: int, category_ids: Sequence[int]) -> list[dict]:
    """One image's model output (xyxy, labels 1..K, scores) as COCO result dicts (xywh)."""
    boxes = output["boxes"].detach().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    scores = output["scores"].detach().cpu().tolist()
    return [
        {
            "image_id": image_id,
            "category_id": category_ids[label - 1],
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(score, 5),
        }
        for (x1, y1, x2, y2), label, score in zip(boxes, labels, scores, strict=True)
    ]


@torch.inference_mode()
def detect_dataset(predictor: Predictor, dataset, category_ids: Sequence[int], *,
                   device: str | torch.device = "cpu", batch_size: int = 8,
                   progress: Callable[[int], None] | None = None,
                   on_batch: Callable[[list, list, list], None] | None = None) -> list[dict]:
    """Detections (COCO results) for every image of a dataset of (float image, target) pairs.

    `category_ids[label - 1]` maps the model's contiguous label back to the dataset's id.
    `progress`, if given, is called with the number of images just done; `on_batch` with each
    batch's images (on `device`), targets and the predictor's outputs.
    """
    predictor.model.eval()
    results: list[dict] = []
    order = list(range(len(dataset)))
    for idx in _batches(order, batch_size):
        items = [dataset[i] for i in idx]
        images = [img.to(device) for img, _ in items]
        outputs = predictor(images)
        for (_, target), out in zip(items, outputs, strict=True):
            results += detections_to_coco(out, target["image_id"], category_ids)
        if on_batch:
            on_batch(images, [target for _, target in items], outputs)
        if progress:
            progress(len(idx))
    return results
