"""`Result`: one image's detections as `Detector.predict` gives them, with `plot` and `to_coco`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from rcnnlab.config import check_threshold
from rcnnlab.inference.detect import coco_records
from rcnnlab.reporting.drawing import draw_detections


@dataclass
class Result:
    """One image's detections: `boxes` (N, 4) xyxy in pixels, `scores` (N,), `class_ids` (N,)
    (the dataset's category ids) and `names` (N); `number` is the digits read left to right at
    `threshold` ("-1" when none is kept; None when the classes are no digits)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    class_ids: torch.Tensor
    names: list[str]
    number: str | None
    threshold: float
    source: str  # a file name, "<video>#<frame>", or "image <i>" for in-memory input
    image_id: int  # the file's numeric stem, else its place in the source (1, 2, ...)
    image: torch.Tensor | None = field(default=None, repr=False)  # uint8 CHW, for plot

    def __len__(self) -> int:
        return len(self.boxes)

    def to_coco(self, image_id: int | None = None) -> list[dict]:
        """The detections as COCO result records (bbox xywh, rounded as in pred.json), under
        `image_id` (default: the result's own)."""
        image_id = self.image_id if image_id is None else image_id
        return coco_records(self.boxes, self.class_ids.tolist(), self.scores, image_id)

    def plot(self, threshold: float | None = None) -> Image.Image:
        """The image with the boxes at or above `threshold` (default: the tuned one) drawn,
        each labelled with its class and score, and the number read above it
        (`rcnnlab.reporting.drawing.draw_detections`)."""
        if self.image is None:
            raise ValueError("this result keeps no image (predict(..., keep_images=False))")
        threshold = self.threshold if check_threshold(threshold) is None else threshold
        keep = self.scores >= threshold
        labels = [f"{n} {s:.2f}" for n, s, k in zip(self.names, self.scores.tolist(),
                                                    keep.tolist(), strict=True) if k]
        return draw_detections(self.image, self.boxes[keep], labels, number=self.number,
                               threshold=threshold)
