"""Grids of training samples with their boxes, drawn by the one drawer (`drawing`):

- `render_augmented_grid` (`rcnnlab data show`): what the detector is trained on, the images
  after the augmentation pipeline with the boxes as it moved them (`rcnnlab.data.show` picks
  and transforms them, reproducibly for a seed);
- `sample_grid` (`rcnnlab data synth --grid`): generated house numbers as saved, for a person to
  check realism and box fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rcnnlab.data.coco import CocoData
from rcnnlab.data.show import describe_transforms, label_names, pick_samples
from rcnnlab.data.synth import saved_sample
from rcnnlab.reporting.drawing import Panel, class_colors, draw_grid

UNNAMED_COLOR = "tab:gray"
"""Colour of a box whose label is missing from the names given."""


def render_augmented_grid(data: CocoData, transforms, out_png: Path, *, n: int = 16,
                          seed: int = 0, cols: int = 4,
                          names: dict[int, str] | None = None, short_sides: Sequence[int] = (),
                          max_size: int = 1333) -> Path:
    """Draw `n` augmented training samples (boxes and class names, a colour per class) into
    one PNG grid.

    `transforms` is a v2 pipeline as `build_train_transforms` builds it; `names` maps model
    labels 1..K to the names drawn (default: the categories' names); `short_sides` and
    `max_size` add multi-scale training's rescaling (`augment.multiscale_sizes`). The same seed
    gives the same images, the same augmentation and the same file.
    """
    samples = pick_samples(data, transforms, n=n, seed=seed, names=names,
                           short_sides=short_sides, max_size=max_size)
    class_names = list((names or label_names(data)).values())
    color_of = dict(zip(class_names, class_colors(len(class_names)), strict=True))
    panels = []
    for sample in samples:
        _, h, w = sample.image.shape
        kept = len(sample.boxes)
        count = (f"{kept} box{'es' * (kept != 1)}" if kept == sample.boxes_before
                 else f"{kept} of {sample.boxes_before} boxes")
        panels.append(Panel(sample.image, sample.boxes, sample.names,
                            colors=[color_of.get(name, UNNAMED_COLOR) for name in sample.names],
                            title=f"image id {sample.image_id}: {count} ({w}x{h} px)"))
    title = (f"{len(samples)} training samples of {Path(data.json_path).name}, seed {seed}; "
             f"augmentation: {describe_transforms(transforms)}"
             + (f", short side from {list(short_sides)}" if short_sides else ""))
    # large images keep up to 640 px a cell: their boxes are often a few pixels
    return draw_grid(panels, out_png, cols=cols, title=title, cell_width=(360, 640))


def sample_grid(out_png: Path, n: int = 32, seed: int = 0) -> Path:
    """Draw the first `n` train images of a seed as `rcnnlab data synth` saves them (JPEG),
    each digit's box labelled with the digit; the number and the image size above each.

    Returns:
        `out_png`.
    """
    panels = []
    for i in range(n):
        image, boxes, digits = saved_sample(seed, "train", i)
        number = "".join(map(str, digits))
        panels.append(Panel(image, boxes, [str(d) for d in digits],
                            title=f"{number}  ({image.width}x{image.height} px)"))
    return draw_grid(panels, out_png, cols=4,
                     title=f"the first {n} train images of seed {seed}, as saved")
