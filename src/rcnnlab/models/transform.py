"""The detector's input transform: native-size or torchvision resizing, and multi-scale training.

torchvision's :class:`GeneralizedRCNNTransform` always rescales an image so that its short side
becomes ``min_size`` (800 by default), capped so that the long side stays <= ``max_size``. For
house-number crops 30-120 px high that is a 7-25x upscale: slow, and it changes what the anchors
see. With ``native=True`` :class:`DetectorTransform` only ever shrinks::

    scale = min(1, min_size / short_side, max_size / long_side)

so an image already inside both limits passes through untouched, and an oversized one is
downscaled exactly as torchvision would.

Multi-scale training (``train_short_sides``): in training mode, one short side is drawn per
*batch* (YOLO-style, so a batch pads to one size) from the list, and every image of the batch is
rescaled to it, up or down, with the long side still capped at ``max_size``. The draw uses
torch's global generator, so a seeded (or resumed) run draws the same sizes. Evaluation never
sees it: it uses the native or ``min_size`` rule above. torchvision's own tuple ``min_size``
draws per image instead and is not used.

Normalisation, batching (padding to a multiple of 32) and ``postprocess`` (mapping boxes back to
the original size) are inherited unchanged; ``postprocess`` works from the recorded sizes, so it
is correct whether or not an image was resized.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from rcnnlab.data.transforms import rescale, resize_scale

__all__ = ["DetectorTransform", "native_scale"]


def native_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """Scale factor native-size mode applies to an ``height`` x ``width`` image.

    ``min(1, min_size / short_side, max_size / long_side)``: never above 1 (no upscaling).
    """
    return min(1.0, resize_scale(height, width, min_size, max_size))


class DetectorTransform(GeneralizedRCNNTransform):
    """A :class:`GeneralizedRCNNTransform` with native-size mode and per-batch multi-scale.

    Args:
        min_size: the short side images are resized to (``native=False``), or the cap on it
            (``native=True``). One size: multi-scale is ``train_short_sides``.
        max_size: cap on the long side.
        image_mean, image_std: normalisation, as torchvision's.
        native: never upscale (see the module docstring).
        train_short_sides: short sides drawn from per training batch; empty = off. Training
            switches the draw off for its last ``no_aug_epochs`` epochs with
            :meth:`enable_multiscale`.
    """

    def __init__(
        self,
        min_size: int,
        max_size: int,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        *,
        native: bool = False,
        train_short_sides: Sequence[int] = (),
        **kwargs,
    ) -> None:
        if isinstance(min_size, list | tuple):
            raise ValueError(
                f"DetectorTransform takes one min_size, got {min_size!r}; for multi-scale "
                "training list the short sides in augment.multiscale_sizes"
            )
        super().__init__(min_size, max_size, image_mean, image_std, **kwargs)
        self.native = native
        self.train_short_sides = tuple(int(s) for s in train_short_sides)
        self.multiscale = True  # whether training batches draw from train_short_sides
        self.batch_short_side: int | None = None  # the size drawn for the current batch

    def enable_multiscale(self, enabled: bool) -> None:
        """Switch the per-batch draw of training on or off (evaluation never draws)."""
        self.multiscale = enabled

    def forward(self, images, targets=None):
        """Draw this batch's short side (training with multi-scale on), then transform."""
        self.batch_short_side = None
        if self.training and self.multiscale and self.train_short_sides:
            pick = int(torch.randint(len(self.train_short_sides), ()))
            self.batch_short_side = self.train_short_sides[pick]
        return super().forward(images, targets)

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """Rescale ``image`` and its target boxes by this mode's factor (no-op at 1)."""
        h, w = (int(s) for s in image.shape[-2:])
        if self.batch_short_side is not None:
            scale = resize_scale(h, w, self.batch_short_side, self.max_size)
        elif self.native:
            scale = native_scale(h, w, self.min_size[0], self.max_size)
        else:
            scale = resize_scale(h, w, self.min_size[0], self.max_size)
        if scale == 1.0:
            return image, target
        boxes = target.get("boxes") if target is not None else None
        image, boxes = rescale(image, boxes, scale)
        if boxes is not None:
            target = {**target, "boxes": boxes}
        return image, target
