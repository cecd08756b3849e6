"""The one drawer of detections, and the one grid of drawn images.

`draw_detections` draws boxes and their labels on an image and returns a PIL image; every
picture with boxes goes through it: `Result.plot`, the run record's detection grid
(`plots.plot_detection_grid`), the demo's summary (`summary.plot_detections`), `rcnnlab data
show` and `rcnnlab data synth --grid` (`samples`). `draw_grid` draws a list of `Panel`s with it
and lays them out in one PNG (a bare matplotlib Figure, never pyplot's global state).

The look (that of `Result.plot`): boxes in `BOX_COLOR` (#ff2d55) unless given per box; each label
white (black on a light colour) on a filled tab of its box's colour, resting on the box's top
edge (or hanging under its bottom edge), in DejaVu Sans (matplotlib's bundled font). A label
does not cover another one (it moves out, up to two rows, past the labels it would cover; only
in a crowd of boxes do they overlap) and never leaves the picture (a white band is added above
or below the image to hold it). Images are scaled up to at least `MIN_HEIGHT`
pixels so that labels stay readable on small crops. With a number, a banner above the picture
says what was read: "read: 123   (threshold 0.50)".
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from rcnnlab.evaluation.sequence import NO_NUMBER
from rcnnlab.files import replacing

BOX_COLOR = "#ff2d55"
"""Colour of boxes not given one."""

MIN_HEIGHT = 360
"""A drawn image is scaled up to at least this height (ORAND's amounts are ~50 px high)."""

MAX_LABEL_SHIFT = 2
"""How many label heights a label may move away from its box to uncover another label."""

GRID_WIDTH, GRID_DPI = 1540, 110
"""A grid's default width in pixels (14 inches at GRID_DPI), and its resolution."""

Color = str | Sequence[float]  # anything matplotlib takes: "#ff2d55", "tab:blue", (r, g, b)


def draw_detections(image: Image.Image | torch.Tensor | np.ndarray,
                    boxes: Any = (),
                    labels: Sequence[str | None] | None = None, *,
                    colors: Color | Sequence[Color] = BOX_COLOR,
                    dashed: bool | Sequence[bool] = False,
                    below: bool | Sequence[bool] = False,
                    number: str | None = None,
                    threshold: float | None = None,
                    min_height: int = MIN_HEIGHT,
                    fit: tuple[int, int] | None = None) -> Image.Image:
    """`image` with `boxes` drawn and labelled, as a new RGB PIL image.

    Args:
        image: a PIL image, a CHW tensor (uint8, or float in [0, 1]) or an HWC array.
        boxes: (N, 4) xyxy in pixels of `image` (tensor, array or sequence of 4 numbers).
        labels: the text of each box ("1 0.97"); None, or a None / "" entry, for no label.
        colors: one colour for every box, or one per box.
        dashed: draw the box dashed (e.g. a missed ground-truth box): one flag or one per box.
        below: put the label under the box instead of on top of it: one flag or one per box.
        number: the number read ("-1": nothing read); draws the banner above the picture.
        threshold: the score threshold the number was read at, said in the banner.
        min_height: scale the image up to at least this height (0: never scale).
        fit: instead, scale the image up or down to fit this (width, height) in pixels: a cell
            of a grid (`draw_grid`), where it is shown at its own pixels.
    """
    picture = to_pil(image)
    xyxy = _xyxy(boxes)
    n = len(xyxy)
    texts = _per_box(labels, n, "labels")
    fills = [_rgb(c) for c in _per_box(colors, n, "colors", single=_is_color(colors))]
    dashes = _per_box(dashed, n, "dashed", single=isinstance(dashed, bool))
    under = _per_box(below, n, "below", single=isinstance(below, bool))

    if fit is not None:
        scale = min(fit[0] / picture.width, fit[1] / picture.height)
    else:
        scale = max(1.0, min_height / picture.height) if min_height else 1.0
    if scale != 1:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)),
                                 Image.Resampling.BILINEAR)
        xyxy = xyxy * scale
    width, height = picture.size
    font_size = max(14, round(height / 16))
    line = max(2, round(height / 180))
    font = _font(font_size)
    tabs = _place_labels(xyxy, texts, under, font, font_size, width)

    banner = max(24, font_size + 12) if number is not None else 0
    band_top = max([0, *(-t[1] for t in tabs.values())])
    band_bottom = max([0, *(t[3] - height for t in tabs.values())])
    out = Image.new("RGB", (width, banner + band_top + height + band_bottom), "white")
    top = banner + band_top
    out.paste(picture, (0, top))
    draw = ImageDraw.Draw(out)
    for (x1, y1, x2, y2), fill, dash in zip(xyxy.tolist(), fills, dashes, strict=True):
        rect = (round(x1), round(y1) + top, max(round(x1), round(x2) - 1),
                max(round(y1), round(y2) - 1) + top)
        if dash:
            _dashed_rectangle(draw, rect, fill, line)
        else:
            draw.rectangle(rect, outline=fill, width=line)
    pad, ink_top = _pad(font_size), _ink_rows(font)[0]
    for i, (x0, y0, x1, y1) in reversed(tabs.items()):  # the first boxes' labels on top
        draw.rectangle((x0, y0 + top, x1 - 1, y1 + top - 1), fill=fills[i])
        draw.text((x0 + pad, y0 + top + pad - ink_top), texts[i], font=font,
                  fill=_text_color(fills[i]))
    if number is not None:
        _draw_banner(draw, width, banner, number, threshold)
    return out


@dataclass
class Panel:
    """One image of a grid and what `draw_detections` draws on it (see its arguments)."""

    image: Image.Image | torch.Tensor | np.ndarray
    boxes: Any = ()
    labels: Sequence[str | None] | None = None
    colors: Color | Sequence[Color] = BOX_COLOR
    dashed: bool | Sequence[bool] = False
    below: bool | Sequence[bool] = False
    number: str | None = None
    threshold: float | None = None
    title: str = ""  # above the cell


def draw_grid(panels: Sequence[Panel], out_png: Path, *, cols: int | None = None,
              title: str = "", legend: Sequence[tuple[str, Color, bool]] = (),
              cell_width: int | tuple[int, int] | None = None) -> Path:
    """Draw each panel with `draw_detections`, lay them out in a grid and write one PNG.

    Every cell has the median aspect ratio of the images and is `cell_width` pixels wide: a
    number, or (least, most) around the images' median width; default: the grid is
    `GRID_WIDTH` pixels wide. Each image is drawn scaled to fill its cell (shown at its own
    pixels: labels keep their size), letterboxed where its shape differs, never distorted.
    Panel titles go above the cells, `title` above the grid, and `legend` entries (label,
    colour, dashed) under it. `cols` defaults to 3 for wide images (house numbers, amounts),
    else 4.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    images = [to_pil(p.image) for p in panels]
    sizes = np.array([im.size for im in images], dtype=float).reshape(-1, 2)
    w, h = np.median(sizes, axis=0) if len(sizes) else (640.0, 480.0)
    cols = max(1, min(cols or (3 if h / w < 0.5 else 4), len(panels) or 1))
    rows = max(1, -(-len(panels) // cols))
    if cell_width is None:
        cell_w = GRID_WIDTH // cols
    elif isinstance(cell_width, int):
        cell_w = cell_width
    else:
        cell_w = int(min(max(w, cell_width[0]), cell_width[1]))
    cell = (cell_w, max(1, round(cell_w * h / w)))
    pictures = [draw_detections(im, p.boxes, p.labels, colors=p.colors, dashed=p.dashed,
                                below=p.below, number=p.number, threshold=p.threshold, fit=cell)
                for im, p in zip(images, panels, strict=True)]
    inch = 1 / GRID_DPI
    fig = Figure(figsize=(cols * cell[0] * inch, rows * (cell[1] * inch + 0.25)
                          + 0.45 * bool(title) + 0.4 * bool(legend)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, picture, panel in zip(axes.flat, pictures, panels, strict=False):
        ax.imshow(np.asarray(picture))
        if panel.title:
            ax.set_title(panel.title, fontsize=9)
    if legend:
        handles = [Line2D([], [], color=_hex(color), lw=2, ls="--" if dash else "-",
                          label=label) for label, color, dash in legend]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles),
                   fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    out_png = Path(out_png)
    with replacing(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=GRID_DPI)
    return out_png


def class_colors(n: int) -> list[tuple[float, float, float, float]]:
    """`n` distinct colours, one per class: tab10 up to 10 classes, tab20 up to 20, else turbo."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / max(n - 1, 1)) for i in range(n)]


def to_pil(image: Image.Image | torch.Tensor | np.ndarray) -> Image.Image:
    """An RGB PIL image of a PIL image, a CHW tensor or an HWC (or HW) array; floats are read
    as [0, 1]."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        array = (array.permute(1, 2, 0) if array.ndim == 3 else array).numpy()
    else:
        array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return Image.fromarray(array).convert("RGB")


# ------------------------------------------------------------------ helpers
def _xyxy(boxes: Any) -> np.ndarray:
    if isinstance(boxes, torch.Tensor):
        return boxes.detach().cpu().double().reshape(-1, 4).numpy()
    return np.asarray([list(map(float, b)) for b in boxes], dtype=np.float64).reshape(-1, 4)


def _is_color(value: Any) -> bool:
    """Whether `value` is one colour (not one per box)."""
    if isinstance(value, str):
        return True
    return (isinstance(value, Sequence) and len(value) in (3, 4)
            and all(isinstance(v, int | float) for v in value))


def _per_box(value: Any, n: int, name: str, single: bool = False) -> list:
    if value is None:
        return [None] * n
    if single:
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"draw_detections: {len(values)} {name} for {n} boxes")
    return values


def _rgb(color: Color) -> tuple[int, int, int]:
    from matplotlib.colors import to_rgb

    return tuple(round(255 * c) for c in to_rgb(color))  # type: ignore[return-value]


def _hex(color: Color) -> str:
    from matplotlib.colors import to_hex

    return to_hex(color)


def _text_color(fill: tuple[int, int, int]) -> str:
    """White on the box colour, black where white would read poorly (contrast under 3:1, WCAG's
    bar for large text: orange, yellow, cyan)."""
    linear = [(c / 255 / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4)
              for c in fill]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "black" if 1.05 / (luminance + 0.05) < 3 else "white"


@functools.cache
def _font_path() -> str | None:
    """matplotlib's bundled DejaVu Sans; None when the font cache is broken."""
    from matplotlib import font_manager

    try:
        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except Exception:  # a broken font cache: Pillow's own font still draws
        return None


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = _font_path()
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    return ImageFont.load_default(size=size)


def _pad(font_size: int) -> int:
    return max(2, font_size // 6)


def _ink_rows(font) -> tuple[int, int]:
    """(top, bottom) of the font's ink from the text origin: digits, capitals and descenders
    fit, so every label is as high and its text is centred in it."""
    _, top, _, bottom = font.getbbox("0Agjy")
    return top, bottom


def _label_size(font, text: str, font_size: int) -> tuple[int, int]:
    pad = _pad(font_size)
    top, bottom = _ink_rows(font)
    return round(font.getlength(text)) + 2 * pad, bottom - top + 2 * pad


def _place_labels(xyxy: np.ndarray, texts: list, under: list, font, font_size: int,
                  width: int) -> dict[int, tuple[int, int, int, int]]:
    """Box index -> its label's rectangle (x0, y0, x1, y1) in the picture's pixels (y < 0: in
    the band above, y > height: in the band below): on the box's top edge (under its bottom
    edge with `under`), moved out past any label placed before that it would cover, by at most
    `MAX_LABEL_SHIFT` label heights (in a crowd of boxes, labels then overlap)."""
    placed: dict[int, tuple[int, int, int, int]] = {}
    for i, ((x1, y1, _, y2), text) in enumerate(zip(xyxy.tolist(), texts, strict=True)):
        if not text:
            continue
        w, h = _label_size(font, text, font_size)
        x = int(min(max(round(x1), 0), max(width - w, 0)))
        start = y = round(y2) if under[i] else round(y1) - h
        # each move passes a placed label, outwards only: at most one move per label
        while hit := [o for o in placed.values() if _overlap((x, y, x + w, y + h), o)]:
            y = max(o[3] for o in hit) if under[i] else min(o[1] for o in hit) - h
            if abs(y - start) > MAX_LABEL_SHIFT * h:  # a crowd: stay put, drawn over the rest
                y = start
                break
        placed[i] = (x, y, x + w, y + h)
    return placed


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _dashed_rectangle(draw: ImageDraw.ImageDraw, rect: tuple[int, int, int, int],
                      fill: tuple[int, int, int], line: int) -> None:
    """A rectangle outline of dashes `line` thick, drawn inside `rect` as `rectangle` draws."""
    x0, y0, x1, y1 = rect
    dash, gap = 3 * line, 2 * line
    for a, b, fixed, horizontal in ((x0, x1, y0, True), (x0, x1, y1 - line + 1, True),
                                    (y0, y1, x0, False), (y0, y1, x1 - line + 1, False)):
        for start in range(a, b + 1, dash + gap):
            end = min(start + dash - 1, b)
            if horizontal:
                draw.rectangle((start, fixed, end, fixed + line - 1), fill=fill)
            else:
                draw.rectangle((fixed, start, fixed + line - 1, end), fill=fill)


def _draw_banner(draw: ImageDraw.ImageDraw, width: int, height: int, number: str,
                 threshold: float | None) -> None:
    """ "read: N   (threshold t)" in black, shrunk to the picture's width when it is narrow."""
    text = "read: nothing" if number == NO_NUMBER else f"read: {number}"
    if threshold is not None:
        text += f"   (threshold {threshold:.2f})"
    size = height - 10
    font = _font(size)
    while size > 8 and font.getlength(text) > width - 12:
        size -= 1
        font = _font(size)
    draw.text((6, 4), text, fill="black", font=font)
