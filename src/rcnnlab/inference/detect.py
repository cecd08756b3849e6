"""Batched detection: a dataset of images (a COCO split, image files) -> COCO detections
(image_id, category_id in the dataset's own ids, bbox xywh, score)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from rcnnlab.inference.predictor import Predictor
from rcnnlab.progress import progress_of


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def coco_records(boxes: torch.Tensor, category_ids: Sequence[int], scores: torch.Tensor,
                 image_id: int) -> list[dict]:
    """xyxy boxes with their dataset category ids and scores as COCO result dicts (bbox xywh,
    rounded to 0.01 px, scores to 1e-5)."""
    return [
        {
            "image_id": image_id,
            "category_id": int(category),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(score, 5),
        }
        for (x1, y1, x2, y2), category, score in zip(boxes.detach().cpu().tolist(),
                                                     category_ids,
                                                     scores.detach().cpu().tolist(), strict=True)
    ]


def detections_to_coco(output: dict, image_id: int, category_ids: Sequence[int]) -> list[dict]:
    """One image's model output (xyxy, labels 1..K, scores) as COCO result dicts (xywh)."""
    labels = output["labels"].detach().cpu().tolist()
    return coco_records(output["boxes"], [category_ids[label - 1] for label in labels],
                        output["scores"], image_id)


@torch.inference_mode()
def detect_dataset(predictor: Predictor, dataset, category_ids: Sequence[int], *,
                   device: str | torch.device = "cpu", batch_size: int = 8,
                   progress: Callable[[int], None] | None = None,
                   on_batch: Callable[[list, list, list], None] | None = None,
                   description: str = "detecting") -> list[dict]:
    """Detections (COCO results) for every image of a dataset of (float image, target) pairs.

    `category_ids[label - 1]` maps the model's contiguous label back to the dataset's id.
    `progress`, if given, is called with the number of images just done (else the bar of
    `PROGRESS`, labelled `description`, advances); `on_batch` with each batch's images (on
    `device`), targets and the predictor's outputs.
    """
    if progress is None:
        with progress_of(description, len(dataset)) as advance:
            return detect_dataset(predictor, dataset, category_ids, device=device,
                                  batch_size=batch_size, progress=advance, on_batch=on_batch)
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
