"""A dataset's fingerprint: the statistics a training plan is derived from (`rcnnlab plan`).

After nnU-Net (Isensee et al., Nature Methods 2021), which reads a dataset's fingerprint and
derives its network, input size, batch and schedule by explicit rules: here image sizes, object
sizes (in pixels and relative to their image), objects per image, images without objects, class
counts and their imbalance, box shapes, and whether the class names are digits or characters.

Everything comes from a loaded split (`load_coco` reads each image's header, never its pixels).
Object sizes are `sqrt(w * h)` in pixels of the original image, the measure COCO's small / medium
/ large ranges and the anchor sizes use; crowd boxes are left out, as training leaves them out.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from rcnnlab.data.categories import digit_names
from rcnnlab.data.coco import CocoData
from rcnnlab.data.stats import compute_stats

# class names that read as writing: a mirrored one is another symbol, or none
_TEXT_WORDS = re.compile(r"char|letter|digit|number|numeral|text|word|plate|glyph", re.I)


@dataclass(frozen=True)
class Spread:
    """Percentiles of one quantity over a dataset (None where there is nothing to measure)."""

    p5: float
    p50: float
    p95: float
    min: float
    max: float

    @classmethod
    def of(cls, values: np.ndarray) -> Spread | None:
        """The spread of `values`, or None when it is empty."""
        if values.size == 0:
            return None
        p5, p50, p95 = np.percentile(values, (5, 50, 95))
        return cls(float(p5), float(p50), float(p95), float(values.min()), float(values.max()))

    def text(self, digits: int = 0, unit: str = "") -> str:
        """`p5 / median / p95 (min-max)` in one string."""
        def f(v: float) -> str:
            return f"{v:.{digits}f}"

        return (f"{f(self.p5)} / {f(self.p50)} / {f(self.p95)}{unit} "
                f"(min {f(self.min)}, max {f(self.max)})")


@dataclass(frozen=True)
class Fingerprint:
    """What a training split holds, as far as a plan needs to know.

    Sizes are in pixels of the original images; `object_relative` is an object's size over its
    image's, `sqrt(w * h / (W * H))`. `imbalance` is the instance count of the most frequent class
    over that of the rarest class that has any (1 = balanced; None without boxes).
    """

    source: str
    images: int
    boxes: int
    negatives: int  # images without a (non-crowd) box
    image_long: Spread | None  # the longer side of each image
    image_short: Spread | None
    object_size: Spread | None  # sqrt(w * h) of each box, px
    object_relative: Spread | None  # sqrt(w * h / (W * H)) of each box
    box_aspect: Spread | None  # h / w of each box
    objects_per_image: Spread | None  # negatives included
    objects_per_image_p99: float
    class_names: tuple[str, ...]  # in category-id order
    class_counts: tuple[int, ...]  # instances per class, same order
    class_image_share: tuple[float, ...]  # share of the images holding each class
    imbalance: float | None
    digits: bool  # every class name is one digit 0-9: numbers are read
    text: bool  # digits, single characters, or names that say so: a mirror image is no sample
    # per box (N x 2): its width and height, and its image's, in pixels; for the rules that
    # look at every box (anchor coverage)
    box_wh: np.ndarray = field(repr=False, compare=False)
    box_image_wh: np.ndarray = field(repr=False, compare=False)

    @property
    def empty_classes(self) -> list[str]:
        """Names of the classes without a training box."""
        return [n for n, c in zip(self.class_names, self.class_counts, strict=True) if c == 0]

    @property
    def negative_share(self) -> float:
        """The share of images without an object."""
        return self.negatives / self.images if self.images else 0.0

    def as_dict(self) -> dict:
        """The summaries as plain JSON / YAML values (no per-box arrays), for the run's config
        and record."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)
                if f.name not in ("box_wh", "box_image_wh")}

    def rows(self) -> list[tuple[str, str]]:
        """The fingerprint as (what, value) rows, for the terminal and the run record."""
        def spread(s: Spread | None, digits: int = 0, unit: str = "") -> str:
            return "-" if s is None else s.text(digits, unit)

        counts = ", ".join(f"{n} {c}" for n, c in zip(self.class_names, self.class_counts,
                                                       strict=True))
        kind = "digits" if self.digits else ("characters / text" if self.text else "objects")
        rows = [
            ("images", f"{self.images}, of which {self.negatives} without objects "
                       f"({100 * self.negative_share:.0f}%)"),
            ("image long side px (p5 / median / p95)", spread(self.image_long)),
            ("image short side px", spread(self.image_short)),
            ("object size sqrt(w*h) px", spread(self.object_size, 1)),
            ("object size / image size", spread(self.object_relative, 3)),
            ("box aspect h/w", spread(self.box_aspect, 2)),
            ("objects per image (p5 / median / p95)", spread(self.objects_per_image)
             + f", p99 {self.objects_per_image_p99:g}"),
            ("classes", f"{len(self.class_names)} ({kind}): {counts}"),
            ("imbalance (most / least frequent class)",
             "-" if self.imbalance is None else f"{self.imbalance:.1f}"),
        ]
        if self.empty_classes:
            rows.append(("classes without a training box", ", ".join(self.empty_classes)))
        return rows


def _plain(value):
    if isinstance(value, Spread):
        return {k: round(v, 4) for k, v in asdict(value).items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return round(value, 4)
    return value


def is_text(names: list[str]) -> bool:
    """Whether class names read as writing: all digits or single characters, or a name such as
    `character`, `letter`, `digit`, `plate` (a mirrored character is no character)."""
    if not names:
        return False
    return (all(len(n.strip()) == 1 and n.strip().isalnum() for n in names)
            or any(_TEXT_WORDS.search(n) for n in names))


def fingerprint(data: CocoData) -> Fingerprint:
    """The fingerprint of a training split."""
    stats = compute_stats(data)
    # each box's image size, in compute_stats' box order (images in file order)
    box_image_wh = np.array([(img["width"], img["height"]) for img in data.images
                             for a in data.annotations.get(img["id"], [])
                             if not a.get("iscrowd", 0)], dtype=np.float64).reshape(-1, 2)
    image_area = box_image_wh[:, 0] * box_image_wh[:, 1]
    sizes = np.sqrt(stats.box_areas)
    long_side = np.maximum(stats.image_widths, stats.image_heights).astype(np.float64)
    short_side = np.minimum(stats.image_widths, stats.image_heights).astype(np.float64)
    counts = tuple(c.instances for c in stats.classes)
    holding = {c["id"]: 0 for c in data.categories}
    for img in data.images:
        for cid in {a["category_id"] for a in data.annotations.get(img["id"], [])
                    if not a.get("iscrowd", 0)}:
            holding[cid] += 1
    present = [c for c in counts if c > 0]
    names = [c.name for c in stats.classes]
    digits = digit_names(data.categories) is not None
    return Fingerprint(
        source=stats.source,
        images=stats.num_images,
        boxes=stats.num_boxes,
        negatives=stats.num_negatives,
        image_long=Spread.of(long_side),
        image_short=Spread.of(short_side),
        object_size=Spread.of(sizes),
        object_relative=Spread.of(sizes / np.sqrt(image_area)) if sizes.size else None,
        box_aspect=Spread.of(stats.box_aspects),
        objects_per_image=Spread.of(stats.boxes_per_image.astype(np.float64)),
        objects_per_image_p99=(float(np.percentile(stats.boxes_per_image, 99))
                               if stats.num_images else 0.0),
        class_names=tuple(names),
        class_counts=counts,
        class_image_share=tuple(holding[c["id"]] / max(stats.num_images, 1)
                                for c in data.categories),
        imbalance=max(present) / min(present) if present else None,
        digits=digits,
        text=digits or is_text(names),
        box_wh=np.stack([stats.box_widths, stats.box_heights], axis=1),
        box_image_wh=box_image_wh,
    )
