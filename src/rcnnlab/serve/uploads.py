"""What a `POST /predict` request carries: its images and its options, each checked before any
pixel is decoded. Every refusal is an `UploadError` with its HTTP status and one line."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from rcnnlab.data.images import read_image
from rcnnlab.errors import DatasetError
from rcnnlab.inference.sources import SourceImage

# what a raw body may be labelled (a multipart part's own type is not trusted either way:
# the bytes are checked by Pillow)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/tiff", "image/gif",
               "application/octet-stream")
OPTIONS_HELP = "threshold (0-1) and eval.* inference options, e.g. eval.nms=gaussian"


class UploadError(Exception):
    """A request refused: `status` (4xx) and a one-line `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Upload:
    """One image file of a request, not yet decoded."""

    name: str
    data: bytes


@dataclass
class Options:
    """A request's options: the threshold for the number read (None: the model's tuned one) and
    `eval.*` overrides (sorted, so that equal options batch together)."""

    threshold: float | None = None
    overrides: tuple[str, ...] = field(default_factory=tuple)


def media_type(content_type: str | None) -> str:
    """`image/png; charset=x` -> `image/png` (lower case; empty when absent)."""
    return (content_type or "").split(";")[0].strip().lower()


def check_raw_type(content_type: str | None) -> None:
    """Refuse a raw body that is not labelled as an image (415)."""
    kind = media_type(content_type)
    if kind not in IMAGE_TYPES:
        raise UploadError(415, f"unsupported content type {kind or '(none)'!r}: send one image "
                          "as the body (image/png, image/jpeg, ...) or images as "
                          "multipart/form-data")


def parse_options(items: Mapping[str, str]) -> Options:
    """A request's options from its query string and form fields; unknown names and values out
    of range are refused (400)."""
    threshold, overrides = None, []
    for name, value in items.items():
        if name == "threshold":
            try:
                threshold = float(value)
            except ValueError:
                raise UploadError(400, f"threshold {value!r} is not a number: give 0-1") from None
            if not 0.0 <= threshold <= 1.0:
                raise UploadError(400, f"threshold {threshold:g} is out of range: give 0-1")
        elif name.startswith("eval."):
            overrides.append(f"{name}={value}")
        else:
            raise UploadError(400, f"unknown option {name!r}: accepted are {OPTIONS_HELP}")
    return Options(threshold, tuple(sorted(overrides)))


def check_header(upload: Upload, index: int, max_pixels: int) -> tuple[int, int]:
    """The upload's width and height from its header (nothing decoded, no torch: the event
    loop may run it): empty or unreadable bytes are 400, more than `max_pixels` pixels 413."""
    label = _label(upload, index)
    if not upload.data:
        raise UploadError(400, f"image {label} is empty: send the image file's bytes")
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our limit, not Pillow's
    try:
        with Image.open(io.BytesIO(upload.data)) as im:
            width, height = im.size
    except Exception as exc:  # Pillow's, or a plugin's that patched Image.open (pi-heif)
        raise UploadError(400, f"image {label} is not an image file that can be read "
                          f"({type(exc).__name__}): send a PNG, JPEG, WebP, BMP or TIFF file"
                          ) from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    if width * height > max_pixels:
        raise UploadError(413, f"image {label} is {width} x {height} = {width * height:,} pixels,"
                          f" more than the server's limit of {max_pixels:,}: send a smaller image")
    return width, height


def decode(upload: Upload, index: int, max_pixels: int) -> SourceImage:
    """The upload (its header checked by `check_header`) as a float CHW image; bytes that do
    not decode are 400."""
    buffer = io.BytesIO(upload.data)
    buffer.name = f"image {_label(upload, index)}"
    try:
        pixels = read_image(buffer, max_pixels=max_pixels)
    except DatasetError as exc:
        raise UploadError(400, str(exc).split(". Fix:")[0] + ": send a valid image") from None
    return SourceImage(F.to_dtype(pixels, torch.float32, scale=True),
                       upload.name or _label(upload, index), index)


def _label(upload: Upload, index: int) -> str:
    return repr(upload.name) if upload.name else f"#{index}"
