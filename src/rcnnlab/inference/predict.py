"""Batched inference: images (a COCO split or image files) -> COCO detections (image_id,
category_id in the dataset's own ids, bbox xywh, score)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as F

from rcnnlab.inference.predictor import Predictor

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder, sorted by name (numerically where the stems are numbers)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of images. Fix: give a folder or a "
                                "COCO json")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(files, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.name))


def image_ids_for(files: Sequence[Path]) -> tuple[list[int], bool]:
    """Image ids from numeric file stems ("12.png" -> 12); else 1..N in file order.

    Returns the ids and whether they were enumerated (then the caller writes the mapping).
    """
    stems = [p.stem for p in files]
    if all(re.fullmatch(r"\d+", s) for s in stems) and len(set(map(int, stems))) == len(stems):
        return [int(s) for s in stems], False
    return list(range(1, len(files) + 1)), True


class ImageFiles(torch.utils.data.Dataset):
    """A list of image files as a dataset of (float image, {"image_id": id}) for detect_dataset."""

    def __init__(self, files: Sequence[Path], image_ids: Sequence[int]):
        self.files, self.image_ids = list(files), list(image_ids)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        return load_image(self.files[index]), {"image_id": self.image_ids[index]}


def load_image(path: Path) -> torch.Tensor:
    """An image file as a float RGB CHW tensor in [0, 1], with a clear error if unreadable."""
    try:
        with Image.open(path) as im:
            return F.to_dtype(F.pil_to_tensor(im.convert("RGB")), torch.float32, scale=True)
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"{path}: cannot read the image ({exc}). Fix: remove or replace "
                         "it") from None
