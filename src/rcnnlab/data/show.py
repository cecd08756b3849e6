"""A grid of augmented training samples with their boxes and class names (`rcnnlab data show`).

It shows what the detector is trained on: the images after the augmentation pipeline, with the
boxes as the pipeline moved them. Reproducible for a seed: v2 transforms draw from torch's global
RNG (they take no generator), so each sample is transformed inside `torch.random.fork_rng` with
its own fixed seed, which leaves the caller's RNG state untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from rcnnlab.errors import DatasetError
from rcnnlab.files import replacing

from .coco import CocoData, CocoDetection
from .transforms import CountDropped, rescale, resize_scale

DPI = 100
# Width of one grid cell: small images are scaled up to the minimum so that the names stay
# readable beside them; large ones are shown at their own size up to the maximum, since their
# boxes are often a few pixels and shrinking the image would hide them under their labels.
MIN_CELL_WIDTH_IN = 3.6
MAX_CELL_WIDTH_IN = 6.4
LABEL_PT = 8  # font size of the class names on the boxes


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


def render_augmented_grid(data: CocoData, transforms, out_png: Path, *, n: int = 16,
                          seed: int = 0, cols: int = 4,
                          names: dict[int, str] | None = None, short_sides: Sequence[int] = (),
                          max_size: int = 1333) -> Path:
    """Draw `n` augmented training samples (boxes and class names) into one PNG grid.

    `transforms` is a v2 pipeline as `build_train_transforms` builds it; `names` maps model
    labels 1..K to the names drawn (default: the categories' names); `short_sides` and
    `max_size` add multi-scale training's rescaling (`augment.multiscale_sizes`). The same seed
    gives the same images, the same augmentation and the same file.
    """
    # a bare Figure draws with Agg and leaves pyplot's global state (and a notebook's backend)
    # alone
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    samples = pick_samples(data, transforms, n=n, seed=seed, names=names,
                           short_sides=short_sides, max_size=max_size)
    colors = colormaps["tab10" if len(data.categories) <= 10 else "tab20"].colors
    color_of = {name: colors[i % len(colors)]
                for i, name in enumerate((names or label_names(data)).values())}

    cols = max(1, min(cols, len(samples)))
    rows = math.ceil(len(samples) / cols)
    # every cell gets the median size and aspect ratio: images are letterboxed in it, not
    # distorted
    sizes = torch.tensor([s.image.shape[1:] for s in samples], dtype=torch.float64)
    aspect = float((sizes[:, 0] / sizes[:, 1]).median())
    cell_w_in = min(max(float(sizes[:, 1].median()) / DPI, MIN_CELL_WIDTH_IN), MAX_CELL_WIDTH_IN)
    image_h_in = cell_w_in * aspect
    fig = Figure(figsize=(cols * cell_w_in, rows * (image_h_in + 0.45) + 0.4),
                 layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, sample in zip(axes.flat, samples, strict=False):
        _, h, w = sample.image.shape
        # extent puts pixel edges on whole numbers, the convention of the box coordinates;
        # nearest neighbour shows the pixels the model gets instead of a smoothed picture
        ax.imshow(sample.image.clamp(0, 1).permute(1, 2, 0).numpy(), extent=(0, w, h, 0),
                  interpolation="nearest")
        # a label goes above its box where there is room for it, else inside the box's top;
        # room = the label's height in image pixels at the scale the image is shown
        inch_per_px = min(cell_w_in / w, image_h_in / h)
        room = LABEL_PT / 72 * 1.5 / inch_per_px
        for (x1, y1, x2, y2), name in zip(sample.boxes.tolist(), sample.names, strict=True):
            color = color_of.get(name, "gray")  # gray: a label missing from `names`
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color,
                                   linewidth=1.5))
            above = y1 >= room
            ax.text(x1, y1, name, color="white", fontsize=LABEL_PT,
                    va="bottom" if above else "top", ha="left", clip_on=True,
                    bbox={"facecolor": color, "edgecolor": "none", "pad": 1, "alpha": 0.85})
        kept = len(sample.boxes)
        count = (f"{kept} box{'es' * (kept != 1)}" if kept == sample.boxes_before
                 else f"{kept} of {sample.boxes_before} boxes")
        ax.set_title(f"image id {sample.image_id}: {count} ({w}x{h} px)", fontsize=9)
    fig.suptitle(f"{len(samples)} training samples of {Path(data.json_path).name}, seed {seed}; "
                 f"augmentation: {describe_transforms(transforms)}"
                 + (f", short side from {list(short_sides)}" if short_sides else ""))
    out_png = Path(out_png)
    with replacing(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out_png
