"""Converters to COCO detection json: what they share, and :func:`write_coco`.

The converters, one module per format: :func:`rcnnlab.data.yolo.yolo_to_coco` (YOLO txt +
data.yaml, also read in place as a split: :func:`rcnnlab.data.yolo.yolo_yaml_split`),
:func:`rcnnlab.data.svhn.svhn_to_coco` (SVHN digitStruct.mat) and
:func:`rcnnlab.data.voc.voc_to_coco` (Pascal VOC xml); the format decisions are in each
module's docstring.

Every converter returns ``(coco, image_root)``: a COCO dict whose image ``file_name`` values are
relative to ``image_root`` and which loads through :func:`rcnnlab.data.coco.load_coco` with no
repairs. Nothing is written unless :func:`write_coco` is called.

The converters do the repairs themselves (through :class:`CocoBuilder`), each counted in
``coco["info"]`` and logged: boxes are clipped to their image and boxes under 1 px (after
clipping) are dropped, the same rule as ``load_coco``. Images without boxes stay as negatives
(counted). Bad input raises :class:`~rcnnlab.data.coco.DatasetError` (a ValueError) naming the
file, the record and the fix (:func:`dataset_error`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from rcnnlab.errors import DatasetError
from rcnnlab.files import write_atomic

__all__ = ["CocoBuilder", "dataset_error", "write_coco"]

log = logging.getLogger(__name__)

# Counts that mean something was changed or left out, logged as warnings when non-zero.
_WARNINGS = {
    "boxes_clipped": "boxes clipped to their image",
    "boxes_dropped_degenerate": "boxes dropped: under 1 px after clipping",
    "skipped_missing_images": "entries skipped: image file missing (check the image folder)",
    "labels_without_image": "label files left out: no image of that name",
}


def dataset_error(path: Path, what: str, fix: str) -> DatasetError:
    """The error for bad input in ``path``: "<path>: <what>. Fix: <fix>"."""
    return DatasetError(f"{path}: {what}. Fix: {fix}")


class CocoBuilder:
    """Collects the images and boxes of one converted dataset, with the repair counts."""

    def __init__(self, source_format: str, source: Path, image_root: Path, counts: tuple[str, ...]):
        self.source = source
        self.info: dict = {"source_format": source_format, "source": str(source),
                           "image_root": str(image_root)}
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.counts = Counter(dict.fromkeys(
            ("boxes_clipped", "boxes_dropped_degenerate", *counts), 0))
        self.missing: list[str] = []  # image files the source names that are not there

    def add_image(self, image_id: int, file_name: str, width: int, height: int) -> dict:
        """Add an image record; returns it, for :meth:`add_box`."""
        image = {"id": image_id, "file_name": file_name, "width": width, "height": height}
        self.images.append(image)
        return image

    def add_box(self, image: dict, category_id: int, x1: float, y1: float, x2: float, y2: float,
                *, iscrowd: int = 0, **extra) -> None:
        """Add an xyxy box (absolute pixels), clipped to the image; dropped if under 1 px."""
        cx1, cy1 = max(x1, 0.0), max(y1, 0.0)
        cx2, cy2 = min(x2, float(image["width"])), min(y2, float(image["height"]))
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            self.counts["boxes_clipped"] += 1
        w, h = cx2 - cx1, cy2 - cy1
        if w < 1.0 or h < 1.0:  # load_coco would drop it: do it here, counted
            self.counts["boxes_dropped_degenerate"] += 1
            return
        self.annotations.append({
            "id": len(self.annotations) + 1, "image_id": image["id"], "category_id": category_id,
            "bbox": [float(cx1), float(cy1), float(w), float(h)], "area": float(w * h),
            "iscrowd": iscrowd, **extra,
        })

    def finish(self, categories: list[dict], **info) -> dict:
        """The COCO dict; counts go in ``info`` and the repairs to the log."""
        with_boxes = {a["image_id"] for a in self.annotations}
        self.counts["negative_images"] = sum(img["id"] not in with_boxes for img in self.images)
        for key, what in _WARNINGS.items():
            if self.counts[key]:
                log.warning("%s: %d %s", self.source, self.counts[key], what)
        if self.missing:
            log.warning("%s: the missing image files include %s", self.source,
                        ", ".join(self.missing[:5]) + (" ..." if len(self.missing) > 5 else ""))
        log.info("%s: %d images (%d without boxes), %d boxes", self.source, len(self.images),
                 self.counts["negative_images"], len(self.annotations))
        self.info.update(info, images=len(self.images), annotations=len(self.annotations),
                         **self.counts)
        return {"info": self.info, "images": self.images, "annotations": self.annotations,
                "categories": categories}


def write_coco(coco: dict, out_json: Path) -> Path:
    """Write a COCO dict to ``out_json`` atomically (temporary file + rename); returns the path.

    File names in the json stay relative to the converter's image root (also recorded in
    ``info["image_root"]``): pass that root to ``load_coco`` when the json lives elsewhere.
    """
    return write_atomic(out_json, json.dumps(coco))
