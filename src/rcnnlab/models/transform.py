"""Input transform that keeps small images at their native resolution.

torchvision's :class:`GeneralizedRCNNTransform` always rescales an image so that its short side
becomes ``min_size`` (800 by default), capped so that the long side stays <= ``max_size``. For
house-number crops 30-120 px high that is a 7-25x upscale: slow, and it changes what the anchors
see. :class:`NativeSizeTransform` only ever shrinks::

    scale = min(1, min_size / short_side, max_size / long_side)

so an image already inside both limits passes through untouched, and an oversized one is
downscaled exactly as torchvision would. Normalisation, batching (padding to a multiple of 32)
and ``postprocess`` (mapping boxes back to the original size) are inherited unchanged;
``postprocess`` works from the recorded sizes, so it is correct whether or not an image was
resized.
"""

from __future__ import annotations

from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

__all__ = ["NativeSizeTransform", "native_scale"]


def native_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """Scale factor :class:`NativeSizeTransform` applies to an ``height`` x ``width`` image.

    ``min(1, min_size / short_side, max_size / long_side)``: never above 1 (no upscaling).
    """
    return min(1.0, min_size / min(height, width), max_size / max(height, width))


class NativeSizeTransform(GeneralizedRCNNTransform):
    """A :class:`GeneralizedRCNNTransform` that downscales oversized images and never upscales.

    Takes the parent's arguments, except that ``min_size`` must be a single size: torchvision's
    multi-scale training (a tuple of sizes drawn at random) means upscaling, which this transform
    exists to avoid.
    """

    def __init__(self, min_size: int, max_size: int, *args, **kwargs) -> None:
        if isinstance(min_size, list | tuple):
            raise ValueError(
                f"NativeSizeTransform takes one min_size, got {min_size!r}; multi-scale training "
                "(several sizes) needs the default resizing transform (native_size=False)"
            )
        super().__init__(min_size, max_size, *args, **kwargs)

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """Return ``image`` (and ``target``) unchanged unless the image exceeds a limit."""
        h, w = image.shape[-2:]
        if native_scale(int(h), int(w), self.min_size[0], self.max_size) >= 1.0:
            return image, target
        # Oversized: torchvision's resize uses min(min_size/short, max_size/long), which is < 1
        # here and so equal to native_scale, and rescales the target boxes with it.
        return super().resize(image, target)
