"""Batched detection: a dataset of images (a COCO split, image files) -> COCO detections
(image_id, category_id in the dataset's own ids, bbox xywh, score).

Under torchrun the batches are shared out: batch k goes to rank k mod N, and rank 0 gathers the
detections back in batch order. The batches are those one process makes, so the detections are
the same list (as long as the model's kernels give a batch the same numbers whatever the number
of threads, which the tests check on the CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rcnnlab.inference.predictor import Predictor
from rcnnlab.progress import progress_of
from rcnnlab.runs.distributed import gather_to_main, world


def _batches(items: Sequence, size: int) -> list[Sequence]:
    return [items[start:start + size] for start in range(0, len(items), size)]


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
    `device`), targets and the predictor's outputs. Under torchrun each rank detects its share
    of the batches (and sees only those in `on_batch`); rank 0 returns every detection, the
    other ranks an empty list.
    """
    if progress is None:
        with progress_of(description, len(dataset)) as advance:
            return detect_dataset(predictor, dataset, category_ids, device=device,
                                  batch_size=batch_size, progress=advance, on_batch=on_batch)
    predictor.model.eval()
    here = world()
    batches = _batches(range(len(dataset)), batch_size)
    mine: list[list[dict]] = []  # this rank's batches' detections, in its batch order
    for idx in batches[here.rank::here.size]:
        items = [dataset[i] for i in idx]
        images = [img.to(device) for img, _ in items]
        outputs = predictor(images)
        found: list[dict] = []
        for (_, target), out in zip(items, outputs, strict=True):
            found += detections_to_coco(out, target["image_id"], category_ids)
        mine.append(found)
        if on_batch:
            on_batch(images, [target for _, target in items], outputs)
        if progress:
            progress(len(idx) * here.size)  # the others go at the same pace
    ranks = gather_to_main(mine)
    if ranks is None:
        return []
    # batch k was rank (k mod N)'s (k // N)-th
    return [det for k in range(len(batches)) for det in ranks[k % here.size][k // here.size]]
