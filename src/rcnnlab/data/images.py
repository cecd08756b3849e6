"""The one image reader: every image that training, evaluation and prediction see comes
through `read_image`, and every image size through `image_size`.

What it does with each kind of file:

* 8-bit RGB: as it is.
* 1-bit, 8-bit grey, palette, grey + alpha, RGBA, CMYK, YCbCr, ...: converted to 8-bit RGB
  (alpha dropped: detectors see colour only).
* 16-bit grey (PNG, TIFF: Pillow's ``I;16`` modes) and 32-bit integer grey (``I``): scaled to
  8 bits by the type's full range (x * 255 / 65535), never clipped: clipping turns a 16-bit
  image white. 16- and 64-bit colour PNGs are reduced to 8 bits per channel by Pillow.
* 32-bit float (``F``) and other modes without a fixed range: refused, naming the file.
* A JPEG whose EXIF orientation says it is rotated or mirrored: turned upright, as every image
  viewer shows it (and as annotation tools draw the boxes); `image_size` reports the upright
  size.
* More pixels than `max_pixels` (``data.max_image_pixels``): refused before decoding, so a
  decompression bomb never fills the memory.
* An unreadable or truncated file: refused, naming the file.

`read_image` also takes an open binary file (an upload in memory, `io.BytesIO`): its `name`
attribute, if any, names it in errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as F

from rcnnlab.errors import DatasetError

DEFAULT_MAX_PIXELS = 100_000_000
"""`data.max_image_pixels`: 100 megapixels, e.g. 10000 x 10000."""

# EXIF orientations that swap width and height (rotations by 90 or 270 degrees)
_TRANSPOSED = {5, 6, 7, 8}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}
_REFUSED = {"F": "32-bit floating point"}


@contextmanager
def _opened(path: Path | _Named, max_pixels: int, what: str) -> Iterator[Image.Image]:
    """The image file opened (header read, nothing decoded), its pixel count checked."""
    # Pillow's own bomb guard would fire at its fixed limit; ours is the config's
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path.file if isinstance(path, _Named) else path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise DatasetError(
                    f"{what}{path}: {width} x {height} = {width * height:,} pixels, more than "
                    f"data.max_image_pixels = {max_pixels:,}. Fix: shrink the image, or raise "
                    "data.max_image_pixels if it is genuine")
            yield im
    except DatasetError:
        raise
    # ImportError: a library that patches Image.open (Ultralytics does, to try a HEIF plugin
    # it may lack) fails so on a file that is no image
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, ImportError) as exc:
        raise DatasetError(f"{what}{path}: cannot be read as an image ({exc}). Fix: replace the "
                           "file with a valid image or remove its record") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


class _Named:
    """An open binary file that prints as its name in error messages."""

    def __init__(self, file: BinaryIO):
        self.file = file

    def __str__(self) -> str:
        return str(getattr(self.file, "name", "an in-memory image"))


def _orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return None


def image_size(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               what: str = "") -> tuple[int, int]:
    """(width, height) of the image as `read_image` returns it (EXIF rotation applied), from
    its header only. `what` prefixes error messages (e.g. the json and record)."""
    with _opened(Path(path), max_pixels, what) as im:
        width, height = im.size
        return (height, width) if _orientation(im) in _TRANSPOSED else (width, height)


def read_image(path: str | Path | BinaryIO, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               what: str = "") -> torch.Tensor:
    """The image as a uint8 RGB CHW tensor (see the module docstring for each kind of file)."""
    path = Path(path) if isinstance(path, str | Path) else _Named(path)
    with _opened(path, max_pixels, what) as im:
        return image_to_tensor(im, f"{what}{path}")


def image_to_tensor(im: Image.Image, name: str, *,
                    fix: str = "convert it to an 8-bit (or 16-bit) PNG or JPEG") -> torch.Tensor:
    """An opened PIL image as a uint8 RGB CHW tensor, as `read_image` reads a file (16-bit
    scaled, EXIF rotation applied, float images refused with a DatasetError naming `name` and
    the `fix`)."""
    if im.mode in _REFUSED:
        raise DatasetError(
            f"{name}: a {_REFUSED[im.mode]} image ({im.mode} mode) has no fixed value "
            f"range to map to 8 bits. Fix: {fix}")
    if _orientation(im) not in (None, 1):
        im = ImageOps.exif_transpose(im)
    if im.mode == "RGB":
        return F.pil_to_tensor(im)
    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        grey = np.asarray(im).astype(np.float64)
        full = 65535.0 if im.mode in _SIXTEEN_BIT or grey.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(grey * (255.0 / full)), 0, 255).astype(np.uint8)
        return torch.from_numpy(np.ascontiguousarray(grey)).expand(3, *grey.shape).clone()
    if im.mode in ("P", "PA") and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow's palette -> RGB drops transparency with a warning
    return F.pil_to_tensor(im.convert("RGB"))
