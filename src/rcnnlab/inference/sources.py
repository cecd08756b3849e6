"""Images to predict on that come without annotations: a folder of image files, their ids."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as F

from rcnnlab.data.images import DEFAULT_MAX_PIXELS, read_image
from rcnnlab.errors import MissingFileError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder, sorted by name (numerically where the stems are numbers)."""
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: not a folder of images. Fix: give a folder or a "
                                "COCO json")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise MissingFileError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
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

    def __init__(self, files: Sequence[Path], image_ids: Sequence[int], *,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.files, self.image_ids, self.max_pixels = list(files), list(image_ids), max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        image = read_image(self.files[index], max_pixels=self.max_pixels)
        return F.to_dtype(image, torch.float32, scale=True), {"image_id": self.image_ids[index]}
