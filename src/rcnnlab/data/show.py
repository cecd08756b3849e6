"""Augmented training samples with their boxes and class names, for `rcnnlab data show`
(`rcnnlab.reporting.samples.render_augmented_grid` draws them).

They show what the detector is trained on: the images after the augmentation pipeline, with the
boxes as the pipeline moved them. Reproducible for a seed: v2 transforms draw from torch's global
RNG (they take no generator), so each sample is transformed inside `torch.random.fork_rng` with
its own fixed seed, which leaves the caller's RNG state untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from rcnnlab.errors import DatasetError

from .coco import CocoData, CocoDetection
from .transforms import CountDropped, rescale, resize_scale


class Sample(NamedTuple):
    """One transformed training sample, ready to draw."""

    image: torch.Tensor  # float CHW in [0, 1], as the model gets it
    boxes: torch.Tensor  # (N, 4) xyxy in absolute pixels of `image`
    names: list[str]  # class name of each box
    image_id: int
    boxes_before: int  # boxes in the annotations (the pipeline may drop those that leave)


def label_names(data: CocoData) -> dict[int, str]:
    """Model label (1..K, contiguous) -> category name; label i is categories[i - 1]."""
    return {i + 1: str(c.get("name", c["id"])) for i, c in enumerate(data.categories)}


def augmented_sample(dataset: CocoDetection, index: int, seed: int,
                     names: dict[int, str] | None = None, short_sides: Sequence[int] = (),
                     max_size: int = 1333) -> Sample:
    """Sample `index` of `dataset` through its transforms, with torch's RNG seeded by `seed`.

    `names` maps model labels to the names drawn (default: the categories' names). With
    `short_sides` (multi-scale training), the image is then rescaled to a short side drawn from
    them, long side capped at `max_size`, as the model's transform does per batch.
    """
    names = names or label_names(dataset.data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image, target = dataset[index]
        side = short_sides[int(torch.randint(len(short_sides), ()))] if short_sides else None
    boxes = F.convert_bounding_box_format(target["boxes"],
                                          new_format=tv_tensors.BoundingBoxFormat.XYXY)
    boxes = boxes.as_subclass(torch.Tensor).reshape(-1, 4)
    # a pipeline without ToDtype (or none at all) yields uint8: show it the same way
    image = F.to_dtype(image, torch.float32, scale=True).as_subclass(torch.Tensor)
    if side is not None:
        h, w = image.shape[-2:]
        image, boxes = rescale(image, boxes, resize_scale(int(h), int(w), side, max_size))
    img = dataset.data.images[index]
    before = sum(1 for a in dataset.data.annotations.get(img["id"], []) if not a.get("iscrowd"))
    return Sample(
        image=image,
        boxes=boxes,
        names=[names.get(int(lab), str(int(lab))) for lab in target["labels"]],
        image_id=img["id"],
        boxes_before=before,
    )


# steps every pipeline ends with: they tidy boxes and types and change no pixel a reader would see
_BOOKKEEPING = (T.ClampBoundingBoxes, T.SanitizeBoundingBoxes, T.ToDtype, T.ToImage,
                T.ToPureTensor, CountDropped)


def describe_transforms(transforms) -> str:
    """The augmentation ops of a pipeline in a few words, e.g. 'ColorJitter p=0.5, RandomAffine'."""
    if transforms is None:
        return "no augmentation"
    ops = transforms.transforms if isinstance(transforms, T.Compose) else [transforms]
    words = []
    for op in ops:
        if isinstance(op, T.RandomApply):
            inner = ", ".join(type(t).__name__ for t in op.transforms)
            words.append(f"{inner} p={op.p:g}")
        elif not isinstance(op, _BOOKKEEPING):
            words.append(type(op).__name__)
    return ", ".join(words) or "no augmentation"


def pick_samples(data: CocoData, transforms, *, n: int = 16, seed: int = 0,
                 names: dict[int, str] | None = None, short_sides: Sequence[int] = (),
                 max_size: int = 1333) -> list[Sample]:
    """`n` distinct images drawn with `seed`, each transformed with a seed drawn from it too."""
    dataset = CocoDetection(data, transforms)
    if len(dataset) == 0:
        raise DatasetError(f"{data.json_path}: no images to show")
    gen = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=gen)[:n].tolist()
    seeds = torch.randint(0, 2**31 - 1, (len(indices),), generator=gen).tolist()
    return [augmented_sample(dataset, i, s, names, short_sides, max_size)
            for i, s in zip(indices, seeds, strict=True)]
