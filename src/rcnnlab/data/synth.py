"""Synthetic SVHN-like house numbers: rcnnlab's embedded default dataset.

Each image imitates SVHN's cropped-around-the-number ("format 1") pictures: a house number of
1-5 digits fills most of the image height, neighbouring characters may show cut at the left or
right border (unlabelled, as in SVHN), and the picture is blurred, noisy and JPEG-compressed.

One image is made in five steps, all randomness drawn from one per-image numpy Generator seeded
with (seed, split, index), so any image can be rebuilt alone and splits can be made in parallel:

1. layout: image height, digit height, font, stroke weight, digits, uneven spacing, margins;
2. canvas: plate, digits, outline or shadow and partial neighbours drawn as three uint8 masks;
3. warp: one small homography (rotation, shear, perspective) applied to the masks; each labelled
   box is the bounding box of that digit's ink pixels mapped by the same homography;
4. colour: textured or gradient background, ink and plate colours with a minimum contrast;
5. degradation: uneven lighting, low resolution, blur, noise; JPEG quality is drawn at save time.
"""

from __future__ import annotations

import functools
import io
import json
import multiprocessing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from rcnnlab.errors import ConfigError, MissingFileError
from rcnnlab.files import write_atomic

GENERATOR_VERSION = "1.0"
SPLITS = ("train", "valid", "test")  # the index of a split seeds its images' generators
CATEGORIES = [{"id": d + 1, "name": str(d)} for d in range(10)]  # category_id 1..10 = digit 0..9

MAX_WIDTH = 300  # SVHN crops are rarely wider; wider layouts are scaled down
HEIGHT_RANGE = (30, 120)  # image heights, drawn log-uniformly
_REF_SIZE = 128  # font size at which every glyph is rendered once and cached
_INK = 128  # a mask pixel at or above this coverage is ink (defines the tight boxes)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # Rec. 601 luminance weights
_DIGIT_COUNT_P = (0.12, 0.38, 0.32, 0.13, 0.05)  # P(1..5 digits), shaped like SVHN's


# --------------------------------------------------------------------------------------------
# Fonts and glyphs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Glyph:
    """One digit's ink coverage, cropped tight, and where its top sits relative to the baseline."""

    mask: np.ndarray  # uint8 coverage 0..255, shape (height, width)
    top: int  # row of the ink top relative to the baseline (negative: above it)


@dataclass(frozen=True)
class _Font:
    """A font able to draw digits, with its ten glyphs at the reference size."""

    path: Path
    glyphs: tuple[_Glyph, ...]  # digits 0..9


def _font_files() -> list[Path]:
    """Every TTF of the machine plus matplotlib's, one per file name (DejaVu ships in both)."""
    system = sorted(Path("/usr/share/fonts").glob("**/*.ttf"))
    bundled = sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf"))
    by_name: dict[str, Path] = {}
    for path in system + bundled:
        by_name.setdefault(path.name, path)
    return [by_name[name] for name in sorted(by_name)]


def _render_glyph(font: ImageFont.FreeTypeFont, char: str) -> _Glyph | None:
    """Render one character tight to its ink, or None when the font draws nothing for it."""
    left, top, right, bottom = font.getbbox(char, anchor="ls")
    if right <= left or bottom <= top:
        return None
    canvas = Image.new("L", (right - left + 4, bottom - top + 4))
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), char, fill=255, font=font, anchor="ls")
    return _crop_glyph(np.asarray(canvas), top - 2)


def _crop_glyph(mask: np.ndarray, top: int) -> _Glyph | None:
    """Crop a coverage mask to its ink; `top` is the baseline-relative row of the mask's row 0."""
    rows = np.flatnonzero((mask >= _INK).any(axis=1))
    cols = np.flatnonzero((mask >= _INK).any(axis=0))
    if rows.size == 0:
        return None
    crop = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return _Glyph(np.ascontiguousarray(crop), top + int(rows[0]))


def _shape_code(mask: np.ndarray) -> np.ndarray:
    """A coarse 12x16 picture of a glyph, for telling digits from symbols and missing glyphs."""
    small = Image.fromarray(mask).resize((12, 16), Image.Resampling.BILINEAR)
    return np.asarray(small, np.float32).ravel() / 255.0


def _reads_as_digits(glyphs: list[_Glyph], reference: np.ndarray) -> bool:
    """True when most glyphs look most like the same digit of the reference font.

    Symbol fonts (cmex10, cmsy10) map '0'..'9' to other shapes and LastResort draws one box for
    all; they fail. Italic and old-style digits pass, since 6 of 10 must match, not all.
    """
    codes = np.stack([_shape_code(g.mask) for g in glyphs])
    nearest = ((codes[:, None, :] - reference[None, :, :]) ** 2).sum(axis=-1).argmin(axis=1)
    return int((nearest == np.arange(10)).sum()) >= 6


def _load_font(path: Path) -> _Font | None:
    """Render a font's ten digits at the reference size; None if it cannot draw them."""
    try:
        font = ImageFont.truetype(str(path), _REF_SIZE)
    except OSError:
        return None
    glyphs = [_render_glyph(font, str(d)) for d in range(10)]
    if any(g is None for g in glyphs):
        return None
    return _Font(path, tuple(glyphs))


@functools.cache
def _fonts() -> tuple[_Font, ...]:
    """The usable fonts, in file-name order (cached per process)."""
    loaded = [f for f in map(_load_font, _font_files()) if f is not None]
    if not loaded:
        raise MissingFileError(
            "no TrueType font able to draw digits was found under /usr/share/fonts or in "
            "matplotlib's font folder; install one (e.g. apt-get install fonts-dejavu-core)"
        )
    # DejaVu Sans is the reference shape when present: it is plain and ships with matplotlib.
    ref = next((f for f in loaded if f.path.name == "DejaVuSans.ttf"), loaded[0])
    reference = np.stack([_shape_code(g.mask) for g in ref.glyphs])
    return tuple(f for f in loaded if _reads_as_digits(list(f.glyphs), reference))


@functools.lru_cache(maxsize=4096)
def _weighted_glyph(font_index: int, digit: int, weight: int) -> _Glyph:
    """A glyph made thinner (weight -1) or bolder (1, 2) by a min/max filter at reference size."""
    glyph = _fonts()[font_index].glyphs[digit]
    if weight == 0:
        return glyph
    pad = 5
    image = Image.fromarray(np.pad(glyph.mask, pad))
    size = {-1: 3, 1: 5, 2: 9}[weight]
    flt = ImageFilter.MinFilter(size) if weight < 0 else ImageFilter.MaxFilter(size)
    out = np.asarray(image.filter(flt))
    # Thinning a hairline font would erase it: keep the original when too much ink is lost.
    if weight < 0 and (out >= _INK).sum() < 0.6 * (glyph.mask >= _INK).sum():
        return glyph
    return _crop_glyph(out, glyph.top - pad) or glyph


# --------------------------------------------------------------------------------------------
# Layout: sizes and positions in image pixels, before the warp
# --------------------------------------------------------------------------------------------


@dataclass
class _Placed:
    """A glyph scaled to its final size and placed on the canvas (top-left corner)."""

    mask: np.ndarray
    x: int
    y: int
    digit: int


@dataclass
class _Layout:
    """Everything the canvas step needs: the image size, the digits and the decorations."""

    width: int
    height: int
    digit_height: int
    digits: list[_Placed]  # labelled, left to right
    neighbours: list[_Placed]  # unlabelled partial characters cut by the left/right border


def _draw_digits(rng: np.random.Generator) -> list[int]:
    """The house number's digits; a leading zero is rare in house numbers, so mostly avoided."""
    n = int(rng.choice(5, p=_DIGIT_COUNT_P)) + 1
    digits = [int(d) for d in rng.integers(0, 10, n)]
    if digits[0] == 0 and rng.random() < 0.9:
        digits[0] = int(rng.integers(1, 10))
    return digits


def _gaps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Gaps between consecutive digits in digit heights: a common spacing plus per-gap jitter."""
    base = rng.uniform(0.02, 0.3) if rng.random() < 0.85 else rng.uniform(0.3, 0.7)
    jitter = rng.uniform(-0.07, 0.07, max(n - 1, 0))
    return np.maximum(base + jitter, -0.03)  # slight overlaps happen on real plates


def _scale_glyph(glyph: _Glyph, sx: float, sy: float) -> np.ndarray:
    """Resize a reference-size glyph mask by (sx, sy); Pillow antialiases when shrinking."""
    h, w = glyph.mask.shape
    size = (max(1, round(w * sx)), max(1, round(h * sy)))
    return np.asarray(Image.fromarray(glyph.mask).resize(size, Image.Resampling.BILINEAR))


@dataclass(frozen=True)
class _Style:
    """How every character of one image is drawn: font, stroke weight and size."""

    font_index: int
    weight: int  # -1 thinner, 0 as designed, 1 and 2 bolder
    scale: float  # reference px -> image px, vertically
    stretch: float  # extra horizontal scale: condensed (< 1) or extended (> 1) lettering

    def mask(self, digit: int) -> np.ndarray:
        """The digit's coverage mask at this style's weight and size."""
        glyph = _weighted_glyph(self.font_index, digit, self.weight)
        return _scale_glyph(glyph, self.scale * self.stretch, self.scale)


@functools.lru_cache(maxsize=1024)
def _font_extent(font_index: int, weight: int) -> tuple[int, int]:
    """Top (baseline-relative) and height of the ink of all ten digits, in reference px."""
    glyphs = [_weighted_glyph(font_index, d, weight) for d in range(10)]
    top = min(g.top for g in glyphs)
    return top, max(g.top + g.mask.shape[0] for g in glyphs) - top


def _layout(rng: np.random.Generator) -> _Layout:
    """Choose the image size and place the labelled digits and any partial neighbours."""
    font_index = int(rng.integers(len(_fonts())))
    weight = int(rng.choice([-1, 0, 0, 1, 2]))
    digits = _draw_digits(rng)
    top_ref, ref_h = _font_extent(font_index, weight)

    height = np.exp(rng.uniform(*np.log(HEIGHT_RANGE)))
    fill = rng.uniform(0.4, 0.8)  # digit height / image height: the number fills the crop
    stretch = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
    glyph_w = [_weighted_glyph(font_index, d, weight).mask.shape[1] for d in digits]
    gaps = _gaps(rng, len(digits))
    margins = rng.uniform(0.1, 0.7, 2)  # left, right; independent, as crops are off-centre
    units = np.sum(glyph_w) * stretch / ref_h + gaps.sum() + margins.sum()  # in digit heights

    digit_h = fill * height
    # Too wide: shrink the whole picture, not the margins; the slack absorbs pixel rounding.
    if units * digit_h > MAX_WIDTH - 8:
        digit_h = (MAX_WIDTH - 8) / units
        height = digit_h / fill
    img_h = int(np.clip(round(height), *HEIGHT_RANGE))
    style = _Style(font_index, weight, digit_h / ref_h, stretch)

    top = rng.uniform(0.25, 0.75) * (img_h - digit_h)
    x = max(2.0, margins[0] * digit_h)
    placed = []
    for digit, gap in zip(digits, np.append(gaps, 0.0), strict=True):
        mask = style.mask(digit)
        wobble = rng.uniform(-0.03, 0.03) * digit_h if rng.random() < 0.3 else 0.0
        glyph_top = _weighted_glyph(font_index, digit, weight).top
        y = round(top + (glyph_top - top_ref) * style.scale + wobble)
        y = int(np.clip(y, 1, img_h - 1 - mask.shape[0]))  # stay inside vertically
        placed.append(_Placed(mask, round(x), y, digit))
        x += mask.shape[1] + gap * digit_h
    width = min(MAX_WIDTH, round(x + max(2.0, margins[1] * digit_h)))
    neighbours = _neighbours(rng, placed, style, width, digit_h)
    return _Layout(width, img_h, round(digit_h), placed, neighbours)


def _neighbours(
    rng: np.random.Generator, placed: list[_Placed], style: _Style, width: int, digit_h: float
) -> list[_Placed]:
    """Partial characters cut by the left/right border, as in SVHN crops (never labelled).

    Only 15-40% of a neighbour's width shows, and it keeps a clear gap from the number, so a
    reader (and a test) can tell it from a labelled digit.
    """
    out = []
    min_gap = max(2.0, 0.12 * digit_h)
    for side in (-1, 1):
        if rng.random() >= 0.3:
            continue
        mask = style.mask(int(rng.integers(10)))
        visible = max(1, round(rng.uniform(0.15, 0.4) * mask.shape[1]))
        if side < 0:
            room, x = placed[0].x, visible - mask.shape[1]
        else:
            room, x = width - (placed[-1].x + placed[-1].mask.shape[1]), width - visible
        if visible + min_gap <= room:
            out.append(_Placed(mask, x, placed[0].y, -1))
    return out


# --------------------------------------------------------------------------------------------
# Canvas: masks before the warp
# --------------------------------------------------------------------------------------------


def _paste_max(layer: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    """Merge a mask into a layer at (x, y) by maximum, clipping at the layer's borders."""
    h, w = layer.shape
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + mask.shape[1], w), min(y + mask.shape[0], h)
    if x1 > x0 and y1 > y0:
        region = layer[y0:y1, x0:x1]
        np.maximum(region, mask[y0 - y : y1 - y, x0 - x : x1 - x], out=region)


def _number_box(layout: _Layout) -> tuple[float, float, float, float]:
    """The box around all labelled digits, before the warp."""
    x0 = min(p.x for p in layout.digits)
    y0 = min(p.y for p in layout.digits)
    x1 = max(p.x + p.mask.shape[1] for p in layout.digits)
    y1 = max(p.y + p.mask.shape[0] for p in layout.digits)
    return x0, y0, x1, y1


def _plate(rng: np.random.Generator, layout: _Layout) -> tuple[np.ndarray, np.ndarray | None]:
    """A rounded plate behind the number, and sometimes a border line (drawn as ink) on it."""
    size = (layout.width, layout.height)
    plate = Image.new("L", size)
    x0, y0, x1, y1 = _number_box(layout)
    pad = rng.uniform(0.12, 0.45) * layout.digit_height
    box = (x0 - pad * rng.uniform(0.7, 1.3), y0 - pad, x1 + pad * rng.uniform(0.7, 1.3), y1 + pad)
    radius = rng.uniform(0.0, 0.35) * layout.digit_height
    ImageDraw.Draw(plate).rounded_rectangle(box, radius=radius, fill=255)
    inset, line = 0.3 * pad, max(1.0, 0.05 * layout.digit_height)
    if rng.random() >= 0.3 or pad - inset - line < 2:
        return np.asarray(plate), None
    border = Image.new("L", size)
    inner = (box[0] + inset, box[1] + inset, box[2] - inset, box[3] - inset)
    ImageDraw.Draw(border).rounded_rectangle(
        inner, radius=max(0.0, radius - inset), outline=255, width=round(line)
    )
    return np.asarray(plate), np.asarray(border)


def _effect_layer(rng: np.random.Generator, ink: np.ndarray, digit_h: int) -> np.ndarray | None:
    """A drop shadow (shifted ink) or an outline (dilated ink), or None for plain digits."""
    kind = rng.random()
    if kind < 0.15:
        dx, dy = rng.integers(1, max(2, round(0.07 * digit_h)) + 1, 2) * rng.choice([-1, 1], 2)
        shadow = np.zeros_like(ink)
        _paste_max(shadow, ink, int(dx), int(dy))
        return shadow
    if kind < 0.25:
        size = 3 if digit_h < 60 else 5
        return np.asarray(Image.fromarray(ink).filter(ImageFilter.MaxFilter(size)))
    return None


@dataclass
class _Canvas:
    """The three masks that the warp moves together: ink, plate and shadow/outline."""

    ink: np.ndarray
    plate: np.ndarray | None
    effect: np.ndarray | None


def _canvas(rng: np.random.Generator, layout: _Layout) -> _Canvas:
    """Draw the digits, neighbours, plate and effect masks in image coordinates."""
    ink = np.zeros((layout.height, layout.width), np.uint8)
    for p in layout.digits + layout.neighbours:
        _paste_max(ink, p.mask, p.x, p.y)
    plate = None
    if rng.random() < 0.4:
        plate, border = _plate(rng, layout)
        if border is not None:
            np.maximum(ink, border, out=ink)
    return _Canvas(ink, plate, _effect_layer(rng, ink, layout.digit_height))


# --------------------------------------------------------------------------------------------
# Warp: one homography for the masks and the boxes
# --------------------------------------------------------------------------------------------


def _homography(params: np.ndarray, width: int, height: int, strength: float) -> np.ndarray:
    """Forward 3x3 map about the image centre from (angle deg, shear, persp x, persp y)."""
    angle, shear, px, py = params * strength
    a = np.deg2rad(angle)
    rotate = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    lean = np.array([[1, shear, 0], [0, 1, 0], [0, 0, 1]])
    persp = np.array([[1, 0, 0], [0, 1, 0], [px / width, py / height, 1]])
    cx, cy = width / 2, height / 2
    to_centre = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
    back = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1]])
    return back @ persp @ rotate @ lean @ to_centre


def _ink_points(p: _Placed) -> np.ndarray:
    """Centres of a glyph's leftmost and rightmost ink pixel in every row, as (N, 2) x, y.

    Every vertex of the ink's convex hull is among these, and a homography maps the hull's
    extreme points to the warped ink's extremes, so they give the exact warped bounding box
    at a fraction of the cost of mapping every ink pixel.
    """
    ink = p.mask >= _INK
    rows = np.flatnonzero(ink.any(axis=1))
    left = ink[rows].argmax(axis=1)
    right = ink.shape[1] - 1 - ink[rows, ::-1].argmax(axis=1)
    xs = np.concatenate([left, right]) + p.x + 0.5
    ys = np.concatenate([rows, rows]) + p.y + 0.5
    return np.stack([xs, ys], axis=1)


def _warp_box(points: np.ndarray, matrix: np.ndarray) -> tuple[float, float, float, float]:
    """Bounding box (xyxy, pixel edges) of pixel centres mapped by a homography."""
    homog = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ matrix.T
    xy = homog[:, :2] / homog[:, 2:3]
    x0, y0 = xy.min(axis=0) - 0.5
    x1, y1 = xy.max(axis=0) + 0.5
    return float(x0), float(y0), float(x1), float(y1)


def _inside(box: tuple[float, float, float, float], width: int, height: int) -> bool:
    """True when a box lies in the image with a 1 px side margin (so it is never cut)."""
    x0, y0, x1, y1 = box
    return x0 >= 1 and x1 <= width - 1 and y0 >= 0 and y1 <= height


def _choose_warp(
    rng: np.random.Generator, layout: _Layout
) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """A random warp that keeps every labelled digit whole, and the digits' warped boxes.

    A warp pushing a digit out is halved until it fits, down to the identity, which fits
    since the layout keeps the digits inside.
    """
    params = np.array(
        [
            np.clip(rng.normal(0, 3.0), -8, 8),  # rotation, degrees
            np.clip(rng.normal(0, 0.08), -0.25, 0.25),  # shear (lean)
            rng.normal(0, 0.12),  # perspective along x: one side of the number nearer
            rng.normal(0, 0.06),  # perspective along y
        ]
    )
    points = [_ink_points(p) for p in layout.digits]
    for strength in (1.0, 0.5, 0.25, 0.0):
        matrix = _homography(params, layout.width, layout.height, strength)
        boxes = [_warp_box(pts, matrix) for pts in points]
        if strength == 0.0 or all(_inside(b, layout.width, layout.height) for b in boxes):
            break
    return matrix, boxes


def _warp_canvas(canvas: _Canvas, matrix: np.ndarray) -> _Canvas:
    """Apply the forward homography to the canvas's masks in one Pillow call.

    The masks travel as the channels of one RGB image (RGB, not RGBA, so Pillow does not
    premultiply by alpha). Pillow samples output pixel centres (x + 0.5, y + 0.5) through the
    inverse map, the same pixel-edge convention as `_warp_box`.
    """
    empty = np.zeros_like(canvas.ink)
    layers = [canvas.ink, canvas.plate, canvas.effect]
    stack = np.stack([empty if m is None else m for m in layers], axis=-1)
    inverse = np.linalg.inv(matrix)
    inverse /= inverse[2, 2]
    h, w = canvas.ink.shape
    image = Image.fromarray(stack, "RGB").transform(
        (w, h), Image.Transform.PERSPECTIVE, tuple(inverse.ravel()[:8]), Image.Resampling.BILINEAR
    )
    warped = np.asarray(image)
    return _Canvas(*(None if m is None else warped[..., i] for i, m in enumerate(layers)))


# --------------------------------------------------------------------------------------------
# Colour: background textures, ink and plate colours
# --------------------------------------------------------------------------------------------


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """An RGB colour in [0, 1], mostly muted like paint and brick, sometimes saturated."""
    rgb = rng.random(3).astype(np.float32)
    grey = rgb @ _LUMA
    return grey + rng.random() ** 2 * (rgb - grey)


def _luma(colour: np.ndarray) -> float:
    """Relative luminance of an RGB colour in [0, 1]."""
    return float(colour @ _LUMA)


def _with_contrast(ink: np.ndarray, ground: np.ndarray, contrast: float) -> np.ndarray:
    """Lighten or darken `ink` until its luminance differs from `ground`'s by `contrast`.

    Goes the way that has room (towards white above a dark ground, black below a light one);
    when neither has enough, the most that is possible is used.
    """
    yi, yg = _luma(ink), _luma(ground)
    if abs(yi - yg) >= contrast:
        return ink
    up_room, down_room = 1.0 - yg, yg
    # Keep the ink on its side of the ground if there is room there, else cross over; when
    # neither side has room, take the roomier one.
    own_up = yi >= yg
    if (up_room if own_up else down_room) >= contrast:
        go_up = own_up
    elif (down_room if own_up else up_room) >= contrast:
        go_up = not own_up
    else:
        go_up = up_room >= down_room
    if go_up:
        target = min(yg + contrast, 1.0)
        t = (target - yi) / max(1.0 - yi, 1e-6)
        return ink + t * (1.0 - ink)
    target = max(yg - contrast, 0.0)
    return ink * (target / max(yi, 1e-6))


def _smooth_noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Low-frequency blotches in [0, 1]: a few random values upsampled bilinearly."""
    grid = rng.random((int(rng.integers(2, 5)), int(rng.integers(2, 8)))).astype(np.float32)
    image = Image.fromarray(grid, "F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image)


def _gradient(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A linear ramp from 0 to 1 across the image in a random direction."""
    a = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = xs * np.cos(a) + ys * np.sin(a)
    return (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)


def _planks(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Siding or planks: bands of random shade separated by thin seams (value 1)."""
    vertical = rng.random() < 0.25
    length = width if vertical else height
    period = max(4, round(rng.uniform(0.15, 0.5) * height))
    pos = np.arange(length) + int(rng.integers(period))
    shades = rng.uniform(0.0, 0.5, pos[-1] // period + 1).astype(np.float32)
    band = np.where(pos % period < max(1, period // 12), 1.0, shades[pos // period])
    band = band.astype(np.float32)
    return np.broadcast_to(band[None, :] if vertical else band[:, None], (height, width))


def _bricks(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Staggered bricks of random shade with mortar joints (value 1)."""
    row_h = max(4, round(rng.uniform(0.12, 0.35) * height))
    brick_w = max(8, round(row_h * rng.uniform(2.0, 3.5)))
    ys, xs = np.mgrid[0:height, 0:width]
    row = ys // row_h
    xs = xs + (row % 2) * (brick_w // 2) + int(rng.integers(brick_w))
    shades = rng.uniform(0.0, 0.5, (row.max() + 1, xs.max() // brick_w + 1)).astype(np.float32)
    joint = max(1, row_h // 8)
    mortar = (ys % row_h < joint) | (xs % brick_w < joint)
    return np.where(mortar, np.float32(1.0), shades[row, xs // brick_w])


def _clutter(rng: np.random.Generator, pattern: np.ndarray) -> np.ndarray:
    """Add 1-2 bars (door frames, pipes, plate edges) that cross the crop, as in street photos."""
    height, width = pattern.shape
    pattern = pattern.copy()
    for _ in range(int(rng.integers(1, 3))):
        vertical = rng.random() < 0.7
        length = width if vertical else height
        start = int(rng.integers(length))
        stop = start + max(2, round(rng.uniform(0.03, 0.25) * length))
        value = np.float32(rng.uniform(0.5, 1.0))
        if vertical:
            pattern[:, start:stop] = value
        else:
            pattern[start:stop, :] = value
    return pattern


def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A background pattern in [0, 1]: 0 is the base colour, 1 the far colour."""
    kinds = ("flat", "blotches", "gradient", "planks", "bricks")
    kind = kinds[int(rng.choice(5, p=[0.15, 0.3, 0.25, 0.15, 0.15]))]
    if kind == "flat":
        pattern = np.zeros((height, width), np.float32)
    else:
        make = {
            "blotches": _smooth_noise,
            "gradient": _gradient,
            "planks": _planks,
            "bricks": _bricks,
        }[kind]
        pattern = make(rng, width, height)
    if kind in ("planks", "bricks"):  # weathering, so repeated patterns are not uniform
        pattern = 0.8 * pattern + 0.2 * _smooth_noise(rng, width, height)
    if rng.random() < 0.35:
        pattern = _clutter(rng, pattern)
    return pattern


def _colours(rng: np.random.Generator, plated: bool) -> dict[str, np.ndarray]:
    """Base/far background, plate, ink and effect colours, with the ink contrast enforced.

    The contrast is luminance difference against what is behind the digits (the plate when
    there is one); it is usually clear but sometimes low, as with faded or dim numbers. The
    far background colour is pushed away from the ink, so a texture never erases a digit.
    """
    contrast = rng.uniform(0.12, 0.2) if rng.random() < 0.2 else rng.uniform(0.2, 0.65)
    base, plate, ink = (_random_colour(rng) for _ in range(3))
    ink = _with_contrast(ink, plate if plated else base, contrast)
    away = np.ones(3, np.float32) if _luma(ink) < _luma(base) else np.zeros(3, np.float32)
    far = base + rng.uniform(0.1, 0.5) * (away - base)
    far = np.clip(far + rng.normal(0, 0.04, 3).astype(np.float32), 0, 1)
    # Shadows are a darker ground; outlines take the side of the ground away from the ink.
    ground = plate if plated else base
    effect = ground * 0.35 if rng.random() < 0.5 else _with_contrast(ground, ink, 0.5)
    return {"base": base, "far": far, "plate": plate, "ink": ink, "effect": effect}


def _solid(colour: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A plain RGB image of an RGB colour in [0, 1]."""
    return Image.new("RGB", size, tuple(int(v * 255 + 0.5) for v in np.clip(colour, 0, 1)))


def _mask(values: np.ndarray) -> Image.Image:
    """An 'L' image from values in [0, 1], for Pillow's fast compositing and multiplying."""
    return Image.fromarray((np.clip(values, 0, 1) * 255 + 0.5).astype(np.uint8))


def _composite(
    rng: np.random.Generator, canvas: _Canvas, colours: dict[str, np.ndarray]
) -> Image.Image:
    """Paint the background, plate, effect and ink layers into one RGB image.

    Pillow's uint8 compositing does this several times faster than float numpy blending.
    """
    h, w = canvas.ink.shape
    size = (w, h)
    texture = _mask(_texture(rng, w, h))
    image = Image.composite(_solid(colours["far"], size), _solid(colours["base"], size), texture)
    ink = _solid(colours["ink"], size)
    if rng.random() < 0.3:  # paint and light are never even: shade the ink across the number
        shade = colours["ink"] * (1.0 + rng.uniform(-0.25, 0.25))
        ink = Image.composite(_solid(shade, size), ink, _mask(_gradient(rng, w, h)))
    paints = [
        (canvas.plate, _solid(colours["plate"], size)),
        (canvas.effect, _solid(colours["effect"], size)),
        (canvas.ink, ink),
    ]
    for mask, paint in paints:
        if mask is not None:
            image = Image.composite(paint, image, Image.fromarray(mask))
    return image


# --------------------------------------------------------------------------------------------
# Degradation: lighting, resolution, blur, noise
# --------------------------------------------------------------------------------------------


def _lighting(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """Uneven light: a soft brightness ramp, and sometimes a hard cast shadow across the crop."""
    w, h = image.size
    light = 1.0 - rng.uniform(0.0, 0.35) * _gradient(rng, w, h)
    if rng.random() < 0.15:  # a shadow edge, as from an eave or a tree
        edge = _gradient(rng, w, h) - rng.uniform(0.2, 0.8)
        softness = rng.uniform(0.02, 0.15)
        light = light * (1.0 - rng.uniform(0.25, 0.45) * np.clip(edge / softness + 0.5, 0, 1))
    return ImageChops.multiply(image, _mask(light).convert("RGB"))


def _degrade(rng: np.random.Generator, image: Image.Image, digit_h: int) -> Image.Image:
    """Low resolution (SVHN crops are often upscaled), optional blur, then sensor noise.

    The resolution loss never takes the digits below ~14 px high, where they stop being legible.
    """
    w, h = image.size
    if rng.random() < 0.7 and digit_h > 16:
        f = rng.uniform(max(0.3, 14 / digit_h), 1.0)
        small = image.resize((max(4, round(w * f)), max(4, round(h * f))), Image.Resampling.BOX)
        image = small.resize((w, h), Image.Resampling.BILINEAR)
    if rng.random() < 0.35:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0) * digit_h / 50))
    if rng.random() < 0.7:
        sigma = rng.uniform(1.0, 10.0)
        noise = rng.standard_normal((h, w, 1), dtype=np.float32) * sigma
        pixels = np.asarray(image, np.float32) + noise
        image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
    return image


def _jpeg_quality(rng: np.random.Generator) -> int:
    """JPEG quality of one image: from heavy blocking (30) to nearly clean (95)."""
    return int(rng.integers(30, 96))


# --------------------------------------------------------------------------------------------
# One sample
# --------------------------------------------------------------------------------------------


@dataclass
class _Sample:
    """A rendered image with its labelled boxes and, for inspection, its unlabelled neighbours."""

    image: Image.Image
    boxes: list[tuple[float, float, float, float]]  # xyxy, absolute pixels, clipped
    digits: list[int]
    neighbours: list[tuple[int, int, int, int]]  # pre-warp xyxy of the partial characters


def _clip(box: tuple[float, ...], width: int, height: int) -> tuple[float, float, float, float]:
    """Clip an xyxy box to the image."""
    x0, y0, x1, y1 = box
    return (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))


def _render(rng: np.random.Generator) -> _Sample:
    """Make one sample (see the module docstring for the steps)."""
    layout = _layout(rng)
    canvas = _canvas(rng, layout)
    matrix, boxes = _choose_warp(rng, layout)
    canvas = _warp_canvas(canvas, matrix)
    colours = _colours(rng, canvas.plate is not None)
    image = _lighting(rng, _composite(rng, canvas, colours))
    image = _degrade(rng, image, layout.digit_height)
    neighbours = [
        (p.x, p.y, p.x + p.mask.shape[1], p.y + p.mask.shape[0]) for p in layout.neighbours
    ]
    return _Sample(
        image,
        [_clip(b, layout.width, layout.height) for b in boxes],
        [p.digit for p in layout.digits],
        neighbours,
    )


def render_sample(
    rng: np.random.Generator,
) -> tuple[Image.Image, list[tuple[float, float, float, float]], list[int]]:
    """Render one synthetic house number.

    Args:
        rng: the generator all randomness is drawn from; the same state gives the same sample.

    Returns:
        The RGB image (before JPEG compression, which is applied when saving), the digits'
        boxes as xyxy floats in absolute pixels (tight around each digit's ink, left to right)
        and the digits 0..9 in the same order. Partial neighbouring characters at the borders
        are drawn but not returned.
    """
    sample = _render(rng)
    return sample.image, sample.boxes, sample.digits


# --------------------------------------------------------------------------------------------
# Splits on disk
# --------------------------------------------------------------------------------------------


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image, so any image is reproducible alone and in any order."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _encoded(rng: np.random.Generator, image: Image.Image) -> bytes:
    """The image as JPEG bytes at a quality drawn from the image's generator."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=_jpeg_quality(rng))
    return buffer.getvalue()


@dataclass(frozen=True)
class _Job:
    """Which image to make and where to write it (picklable for the worker pool)."""

    folder: Path
    split: str
    seed: int
    index: int  # 0-based; the file and image id are index + 1


def _make_image(job: _Job) -> tuple[str, int, int, list, list[int]]:
    """Render, encode and write one image; return its record for the annotations."""
    rng = _image_rng(job.seed, job.split, job.index)
    sample = _render(rng)
    name = f"{job.index + 1:06d}.jpg"
    (job.folder / name).write_bytes(_encoded(rng, sample.image))
    width, height = sample.image.size
    return name, width, height, sample.boxes, sample.digits


def _collect(results: Iterable, progress: Callable[[int], None] | None) -> list:
    """Gather records in order, reporting each finished image to `progress`."""
    records = []
    for record in results:
        records.append(record)
        if progress is not None:
            progress(1)
    return records


def _records(jobs: list[_Job], workers: int, progress: Callable[[int], None] | None) -> list:
    """The jobs' records in job order, made in this process or in a pool of `workers`.

    Order (hence the json) does not depend on `workers`, and every image has its own generator,
    so the files are identical whichever way they are made.
    """
    if workers == 1 or len(jobs) < 2:
        return _collect(map(_make_image, jobs), progress)
    # fork where there is one: workers only run numpy and Pillow, and unlike spawn it needs
    # no `if __name__ == "__main__"` guard in the caller's script and no re-import per worker.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        return _collect(pool.imap(_make_image, jobs, chunksize=16), progress)


def _coco(records: list, split: str, seed: int) -> dict:
    """The COCO dict of a split from its image records (ids from 1, bbox as xywh)."""
    images, annotations = [], []
    for image_id, (name, width, height, boxes, digits) in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for (x0, y0, x1, y1), digit in zip(boxes, digits, strict=True):
            w, h = round(x1 - x0, 2), round(y1 - y0, 2)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": digit + 1,
                    "bbox": [round(x0, 2), round(y0, 2), w, h],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                }
            )
    info = {
        "description": "rcnnlab synthetic SVHN-like house numbers",
        "generator": f"rcnnlab.data.synth {GENERATOR_VERSION}",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "split": split,
        "num_images": len(images),
        "num_annotations": len(annotations),
        "fonts": [f.path.name for f in _fonts()],
    }
    return {"info": info, "images": images, "annotations": annotations, "categories": CATEGORIES}


def generate_split(
    out_dir: Path,
    split: str,
    n_images: int,
    seed: int = 0,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Generate one split: JPEG images and `annotations.json` in `out_dir/<split>/`.

    Args:
        out_dir: dataset root; the split's folder is created inside it.
        split: one of "train", "valid", "test" (it seeds the images, so splits differ).
        n_images: number of images, named 000001.jpg, 000002.jpg, ...
        seed: dataset seed; the same seed gives byte-identical files, whatever `workers` is.
        workers: processes to render with (1 renders in this process).
        progress: called with 1 after each image is written, e.g. to advance a progress bar.

    Returns:
        The path of the split's COCO json (file names are relative to its folder).
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if n_images < 0 or workers < 1 or seed < 0:
        raise ConfigError("n_images and seed must be >= 0 and workers >= 1")
    folder = Path(out_dir) / split
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [_Job(folder, split, seed, i) for i in range(n_images)]
    records = _records(jobs, workers, progress)
    json_path = folder / "annotations.json"
    # Written last and atomically: a split folder with its json is complete (a kill before
    # leaves no json, and the split is generated again), so the images need no safe write.
    return write_atomic(json_path, json.dumps(_coco(records, split, seed)))


def generate_dataset(
    out_dir: Path,
    n_train: int,
    n_valid: int,
    n_test: int,
    seed: int = 0,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Path]:
    """Generate the train, valid and test splits under `out_dir` (see `generate_split`).

    Returns:
        Split name -> path of its annotations.json.
    """
    counts = {"train": n_train, "valid": n_valid, "test": n_test}
    return {
        split: generate_split(out_dir, split, n, seed=seed, workers=workers, progress=progress)
        for split, n in counts.items()
    }


def saved_sample(
    seed: int, split: str, index: int
) -> tuple[Image.Image, list[tuple[float, float, float, float]], list[int]]:
    """Image `index` (0-based) of a split as `generate_split` saves it (after JPEG), with its
    boxes (xyxy, absolute pixels) and digits, left to right; made alone, without the others.

    `rcnnlab.reporting.samples.sample_grid` draws them for a person to check realism and box
    fit.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    rng = _image_rng(seed, split, index)
    sample = _render(rng)
    image = Image.open(io.BytesIO(_encoded(rng, sample.image))).convert("RGB")
    return image, sample.boxes, sample.digits
