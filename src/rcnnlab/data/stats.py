"""What a COCO split holds: class balance, image and box sizes, negatives (`rcnnlab data stats`).

Counts follow what training and COCO evaluation see. Crowd annotations are counted on their own
and left out of everything else (they are no instances: training drops them and COCO evaluation
only uses them to ignore detections), as detectron2's class histogram does. A negative is an
image without a non-crowd box.

Box size ranges are COCO's, on the box area w*h in pixels, split half-open so every box falls in
exactly one range: small = area < 32², medium = 32² <= area < 96², large = area >= 96².
pycocotools' `areaRng` ranges are closed at both ends ([0, 32²], [32², 96²], [96², 1e5²]), so a
box whose area is exactly 32² or 96² counts in both neighbouring ranges there; those boxes are
counted in `on_area_boundary` so the difference can be seen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rcnnlab.files import replacing

from .coco import CocoData

SMALL_AREA = 32**2  # COCO: small objects have area < 32²
MEDIUM_AREA = 96**2  # COCO: medium objects have 32² <= area < 96², large ones area >= 96²
PERCENTILES = (5, 50, 95)


@dataclass(frozen=True)
class ClassCount:
    """Instances of one category (crowd annotations not counted)."""

    category_id: int
    name: str
    instances: int
    share: float | None  # percent of all instances (None when the split has none)


@dataclass
class DatasetStats:
    """Summary of one COCO split, with the per-image and per-box values the plots are drawn from.

    Summaries are None where there is nothing to summarise (no images, no boxes).
    """

    source: str  # the json the split was read from
    num_images: int
    num_boxes: int  # non-crowd annotations
    num_crowd: int  # crowd annotations (not in any other count)
    num_negatives: int  # images without a non-crowd box
    classes: list[ClassCount]  # every category, sorted by id, including those without instances
    size_ranges: dict[str, int]  # "small" / "medium" / "large" -> box count
    on_area_boundary: int  # boxes with area exactly 32² or 96² (pycocotools counts them twice)
    # per image, in file order
    boxes_per_image: np.ndarray = field(repr=False)
    image_widths: np.ndarray = field(repr=False)
    image_heights: np.ndarray = field(repr=False)
    # per non-crowd box
    box_widths: np.ndarray = field(repr=False)
    box_heights: np.ndarray = field(repr=False)

    @property
    def box_areas(self) -> np.ndarray:
        """Box areas w*h in pixels (what COCO's size ranges are defined on)."""
        return self.box_widths * self.box_heights

    @property
    def box_aspects(self) -> np.ndarray:
        """Box aspect ratios h/w (> 1: taller than wide, as digits are)."""
        return self.box_heights / self.box_widths

    @property
    def num_distinct_sizes(self) -> int:
        """How many different (width, height) image sizes the split has."""
        return len(set(zip(self.image_widths.tolist(), self.image_heights.tolist(), strict=True)))

    @property
    def size_range_shares(self) -> dict[str, float | None]:
        """Percent of the boxes in each COCO size range."""
        return {k: _share(n, self.num_boxes) for k, n in self.size_ranges.items()}

    def boxes_per_image_summary(self) -> dict[str, float] | None:
        """min / median / mean / max boxes per image (negatives included)."""
        return _summary(self.boxes_per_image, ("min", "median", "mean", "max"))

    def image_size_summary(self) -> dict[str, dict[str, float] | None]:
        """min / median / mean / max of the image widths and heights."""
        keys = ("min", "median", "mean", "max")
        return {"width": _summary(self.image_widths, keys),
                "height": _summary(self.image_heights, keys)}

    def box_shape_percentiles(self) -> dict[str, dict[str, float] | None]:
        """5th / 50th / 95th percentiles of box width, height and aspect ratio h/w."""
        return {"width": _percentiles(self.box_widths),
                "height": _percentiles(self.box_heights),
                "aspect_h_over_w": _percentiles(self.box_aspects)}

    def as_dict(self) -> dict:
        """The summaries as plain JSON-ready values (no per-box arrays)."""
        return {
            "source": self.source,
            "images": self.num_images,
            "boxes": self.num_boxes,
            "crowd": self.num_crowd,
            "negatives": self.num_negatives,
            "classes": [asdict(c) for c in self.classes],
            "boxes_per_image": self.boxes_per_image_summary(),
            "image_size": {**self.image_size_summary(),
                           "distinct_sizes": self.num_distinct_sizes},
            "size_ranges": {k: {"boxes": n, "share": self.size_range_shares[k]}
                            for k, n in self.size_ranges.items()},
            "on_area_boundary": self.on_area_boundary,
            "box_shape_percentiles": self.box_shape_percentiles(),
        }


def _share(n: int, total: int) -> float | None:
    return 100.0 * n / total if total else None


def _summary(values: np.ndarray, keys: tuple[str, ...]) -> dict[str, float] | None:
    if values.size == 0:
        return None
    funcs = {"min": np.min, "median": np.median, "mean": np.mean, "max": np.max}
    return {k: float(funcs[k](values)) for k in keys}


def _percentiles(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES),
                                             strict=True)}


def compute_stats(data: CocoData) -> DatasetStats:
    """The statistics of a loaded split (boxes as `load_coco` repaired them)."""
    per_image = [data.annotations.get(img["id"], []) for img in data.images]
    instances = [[a for a in anns if not a.get("iscrowd", 0)] for anns in per_image]
    boxes = [a for anns in instances for a in anns]
    wh = np.array([a["bbox"][2:4] for a in boxes], dtype=np.float64).reshape(-1, 2)
    area = wh[:, 0] * wh[:, 1]
    counts = np.array([len(anns) for anns in instances], dtype=np.int64)
    by_class = {c["id"]: 0 for c in data.categories}
    for a in boxes:
        by_class[a["category_id"]] += 1
    return DatasetStats(
        source=str(data.json_path),
        num_images=len(data.images),
        num_boxes=len(boxes),
        num_crowd=sum(len(a) for a in per_image) - len(boxes),
        num_negatives=int(np.sum(counts == 0)),
        classes=[ClassCount(c["id"], str(c.get("name", c["id"])), by_class[c["id"]],
                            _share(by_class[c["id"]], len(boxes)))
                 for c in data.categories],
        size_ranges={"small": int(np.sum(area < SMALL_AREA)),
                     "medium": int(np.sum((area >= SMALL_AREA) & (area < MEDIUM_AREA))),
                     "large": int(np.sum(area >= MEDIUM_AREA))},
        on_area_boundary=int(np.sum((area == SMALL_AREA) | (area == MEDIUM_AREA))),
        boxes_per_image=counts,
        image_widths=np.array([img["width"] for img in data.images], dtype=np.int64),
        image_heights=np.array([img["height"] for img in data.images], dtype=np.int64),
        box_widths=wh[:, 0],
        box_heights=wh[:, 1],
    )


# ---------------------------------------------------------------- report tables
# Each table is built once as (title, header, rows, right-aligned columns) and rendered either as
# plain text (the CLI) or as Markdown (run records), so the two never disagree.

_RANGE_LABELS = {"small": "[0, 32^2)", "medium": "[32^2, 96^2)", "large": "[96^2, inf)"}


def _num(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "-"
    return str(int(v)) if float(v).is_integer() else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _tables(stats: DatasetStats) -> list[tuple[str, list[str], list[list[str]]]]:
    classes = [[str(c.category_id), c.name, str(c.instances), _pct(c.share)]
               for c in stats.classes]
    classes.append(["", "total", str(stats.num_boxes), _pct(_share(stats.num_boxes,
                                                                   stats.num_boxes))])

    bpi = stats.boxes_per_image_summary() or {}
    sizes = stats.image_size_summary()
    keys = ("min", "median", "mean", "max")
    per_image = [["boxes per image", *(_num(bpi.get(k), 2) for k in keys)]]
    for dim in ("width", "height"):
        per_image.append([f"image {dim} (px)", *(_num((sizes[dim] or {}).get(k)) for k in keys)])

    shares = stats.size_range_shares
    ranges = [[k, _RANGE_LABELS[k], str(n), _pct(shares[k])]
              for k, n in stats.size_ranges.items()]

    shape = stats.box_shape_percentiles()
    labels = {"width": "box width (px)", "height": "box height (px)",
              "aspect_h_over_w": "box aspect h/w"}
    shapes = [[labels[k]] + [_num((p or {}).get(f"p{q}"), 2) for q in PERCENTILES]
              for k, p in shape.items()]

    return [
        ("Classes (instances; crowd annotations not counted)",
         ["id", "name", "instances", "share %"], classes),
        (f"Images (distinct sizes: {stats.num_distinct_sizes})",
         ["", "min", "median", "mean", "max"], per_image),
        ("Box sizes (COCO ranges of the area w*h in px; half-open, each box in one range)",
         ["range", "area", "boxes", "share %"], ranges),
        ("Box shapes (percentiles)", [""] + [f"p{q}" for q in PERCENTILES], shapes),
    ]


def _headline(stats: DatasetStats) -> list[str]:
    return [stats.source,
            f"images {stats.num_images}, of which negatives (no box) {stats.num_negatives}; "
            f"boxes {stats.num_boxes}; crowd annotations {stats.num_crowd}"]


def _footnotes(stats: DatasetStats) -> list[str]:
    if not stats.on_area_boundary:
        return []
    return [f"{stats.on_area_boundary} boxes have an area of exactly 32^2 or 96^2: counted here in "
            "the upper range,",
            "in both neighbouring ranges by pycocotools (its area ranges are closed intervals)."]


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    # first column left-aligned (names), numbers right-aligned; "name" column too when present
    left = {0} | ({1} if header[:2] == ["id", "name"] else set())

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(header), *(line(r) for r in rows)]


def format_stats(stats: DatasetStats) -> str:
    """The plain-text report that `rcnnlab data stats` prints."""
    out = _headline(stats)
    for title, header, rows in _tables(stats):
        out += ["", title, *("  " + t for t in _text_table(header, rows))]
    notes = _footnotes(stats)
    return "\n".join(out + ([""] + notes if notes else [])) + "\n"


def stats_table_markdown(stats: DatasetStats) -> str:
    """The same report as Markdown (for run records)."""
    head = _headline(stats)
    out = [f"`{head[0]}`", "", head[1]]
    for title, header, rows in _tables(stats):
        align = ["---" if i == 0 or (i == 1 and header[1] == "name") else "---:"
                 for i in range(len(header))]
        out += ["", f"**{title}**", "", "| " + " | ".join(header) + " |",
                "| " + " | ".join(align) + " |",
                *("| " + " | ".join(r) + " |" for r in rows)]
    notes = _footnotes(stats)
    return "\n".join(out + ([""] + notes if notes else [])) + "\n"


# ---------------------------------------------------------------- figure


def _pixel_bins(*arrays: np.ndarray, target: int = 50) -> np.ndarray:
    """Histogram edges on whole pixels: pixel sizes are integers, and edges that do not fall
    between them make a comb of empty and doubled bins."""
    lo = min(float(a.min()) for a in arrays)
    hi = max(float(a.max()) for a in arrays)
    if hi - lo < 10:  # one size (or a few): a handful of empty bins around it, not one wide bar
        lo, hi = max(0.0, lo - 5), hi + 5
    step = max(1, int(np.ceil((hi - lo + 1) / target)))
    return np.arange(np.floor(lo), hi + step + 1, step) - 0.5


def _overlaid_hist(ax, arrays: list[np.ndarray], labels: list[str]) -> None:
    bins = _pixel_bins(*arrays)
    for values, label, color in zip(arrays, labels, ("tab:blue", "tab:orange"), strict=False):
        ax.hist(values, bins=bins, histtype="stepfilled", alpha=0.45, color=color, label=label)
        ax.hist(values, bins=bins, histtype="step", color=color)
    ax.legend()


def plot_stats(stats: DatasetStats, out_png: Path) -> Path:
    """One PNG of histograms: boxes per image, image sizes, box sizes with COCO's area ranges
    marked, box aspect ratios and the class counts."""
    # a bare Figure draws with Agg and leaves pyplot's global state (and a notebook's backend)
    # alone
    from matplotlib.figure import Figure
    from matplotlib.offsetbox import AnchoredText
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(15, 8.5), layout="constrained")
    axes = fig.subplots(2, 3)
    (ax_bpi, ax_img, ax_class), (ax_wh, ax_area, ax_aspect) = axes

    if stats.num_images:
        top = int(stats.boxes_per_image.max())
        ax_bpi.hist(stats.boxes_per_image, bins=np.arange(top + 2) - 0.5, rwidth=0.85,
                    color="tab:blue")
        ax_bpi.set_xticks(range(0, top + 1, max(1, (top + 1) // 10)))
        _overlaid_hist(ax_img, [stats.image_widths, stats.image_heights], ["width", "height"])
    ax_bpi.set(title=f"Boxes per image ({stats.num_negatives} images without a box)",
               xlabel="boxes", ylabel="images")
    ax_img.set(title=f"Image sizes (distinct: {stats.num_distinct_sizes})",
               xlabel="pixels", ylabel="images")

    names = [c.name for c in stats.classes]
    bars = ax_class.bar(range(len(names)), [c.instances for c in stats.classes],
                        color="tab:green")
    ax_class.set_xticks(range(len(names)), names)
    if len(names) <= 30:  # counts on bars stay legible up to about this many classes
        ax_class.bar_label(bars, fontsize=8)
    if len(names) > 12 or max(map(len, names), default=0) > 6:
        ax_class.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax_class.set(title="Instances per class", xlabel="category", ylabel="instances")

    if stats.num_boxes:
        _overlaid_hist(ax_wh, [stats.box_widths, stats.box_heights], ["width", "height"])
        side = np.sqrt(stats.box_areas)
        ax_area.hist(side, bins=_pixel_bins(side), color="tab:purple")
        for edge in (32, 96):
            ax_area.axvline(edge, color="black", linestyle="--", linewidth=1)
        ax_area.set_xlim(0, max(float(side.max()), 96.0) * 1.05)  # both thresholds always shown
        n, pct = stats.size_ranges, stats.size_range_shares
        ax_area.add_artist(AnchoredText(
            "\n".join(f"{k} {n[k]} ({pct[k]:.1f}%)" for k in n), loc="upper right",
            prop={"fontsize": 9}))
        # log-spaced bins: h/w = 2 and h/w = 0.5 are equally far from square
        aspects = stats.box_aspects
        lo, hi = float(aspects.min()), float(aspects.max())
        ax_aspect.hist(aspects, bins=np.geomspace(lo, hi, 40) if hi > lo else 10,
                       color="tab:red")
        ax_aspect.set_xscale("log")
        ticks = [t for t in (1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8) if lo / 2 <= t <= hi * 2]
        ax_aspect.xaxis.set_major_locator(FixedLocator(ticks))
        ax_aspect.set_xticklabels([f"{t:g}" for t in ticks])
        ax_aspect.xaxis.set_minor_locator(NullLocator())
        ax_aspect.xaxis.set_minor_formatter(NullFormatter())
        ax_aspect.axvline(1.0, color="black", linestyle=":", linewidth=1)
    ax_wh.set(title="Box widths and heights", xlabel="pixels", ylabel="boxes")
    ax_area.set(title="Box size sqrt(w*h): COCO small < 32 <= medium < 96 <= large",
                xlabel="sqrt(area) in pixels", ylabel="boxes")
    ax_aspect.set(title="Box aspect ratio h/w (> 1: taller than wide)",
                  xlabel="h / w (log scale)", ylabel="boxes")

    fig.suptitle(f"{stats.source}: {stats.num_images} images, {stats.num_boxes} boxes")
    with replacing(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out_png
