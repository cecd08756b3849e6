"""The one detection drawer (`rcnnlab.reporting.drawing`): boxes where they are given, in their
colour; labels drawn, never on each other, never cut off; the number's banner; small images
scaled up; and the grid that lays drawn images out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rcnnlab.reporting.drawing import (
    BOX_COLOR,
    MIN_HEIGHT,
    Panel,
    _font,
    _place_labels,
    draw_detections,
    draw_grid,
    to_pil,
)

GREY = (128, 128, 128)
RED = np.array([0xFF, 0x2D, 0x55])  # BOX_COLOR
ORANGE = np.array([0xFF, 0x9D, 0x00])


def _near(pixels: np.ndarray, colour, tol: int = 40) -> np.ndarray:
    """Mask of the pixels within `tol` (sum of channel differences) of `colour`."""
    return np.abs(pixels.astype(int) - np.asarray(colour, dtype=int)).sum(axis=-1) < tol


def _grey(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), GREY)


def test_box_colour_at_the_box_edges_of_a_scaled_image():
    assert BOX_COLOR == "#ff2d55"
    # 100x50 is scaled by 360 / 50 = 7.2 to 720x360; the label fits above the box: no band
    out = draw_detections(_grey(100, 50), [[10, 20, 40, 45]], ["7 0.93"])
    assert out.size == (720, MIN_HEIGHT)
    px = np.asarray(out)
    x1, y1, x2, y2 = 72, 144, 288 - 1, 324 - 1  # the box in output pixels, edges inclusive
    rows = slice(y1 + 5, y2 - 5)
    assert _near(px[rows, x1], RED).all() and _near(px[rows, x2], RED).all()  # left, right
    assert _near(px[y1, x1 + 5:x2 - 5], RED).all() and _near(px[y2, x1 + 5:x2 - 5], RED).all()
    assert _near(px[rows, x1 + 10], GREY, 5).all()  # inside the box: the image, untouched
    assert _near(px[rows, x2 + 10], GREY, 5).all()  # and right of it
    # the label: a filled tab of the box colour resting on the top edge, with white text in it
    tab = px[y1 - 20:y1 - 2, x1:x1 + 40]
    assert _near(tab, RED).mean() > 0.4
    assert (_near(tab, (255, 255, 255), 60)).sum() > 30  # the text's ink
    # a box without a label draws no tab
    bare = np.asarray(draw_detections(_grey(100, 50), [[10, 20, 40, 45]]))
    assert not _near(bare[y1 - 20:y1 - 2, x1:x1 + 40], RED).any()


def test_colours_dashes_and_labels_below_per_box():
    out = draw_detections(_grey(100, 50), [[10, 10, 30, 30], [60, 10, 80, 30]], ["a", "b"],
                          colors=["#00a651", "#ff9d00"], dashed=[False, True],
                          below=[False, True])
    px = np.asarray(out)
    assert out.height == MIN_HEIGHT  # both labels fit inside the image
    green = _near(px, (0x00, 0xA6, 0x51))
    assert green[:, :300].sum() > 500 and not green[:, 400:].any()
    # the dashed box: its top edge is part orange, part image
    top = px[72, 440:570]
    assert 0.3 < _near(top, ORANGE).mean() < 0.9 and _near(top, GREY, 5).any()
    # its label hangs under the bottom edge (y 216), in black: orange is too light for white
    under = px[218:250, 432:470]
    assert _near(under, ORANGE).mean() > 0.3 and (under.sum(axis=-1) < 150).sum() > 10
    assert not _near(px[40:70, 432:470], ORANGE).any()  # nothing above the box


def test_labels_that_would_leave_the_image_get_a_band():
    # a box touching the top: its label goes into a white band added above the image
    out = draw_detections(_grey(100, 50), [[10, 0, 40, 50]], ["1 0.99"])
    band = out.height - MIN_HEIGHT
    assert 20 < band < 60 and out.width == 720
    px = np.asarray(out)
    assert _near(px[:band, 72:110], RED).mean() > 0.3  # the tab in the band
    assert _near(px[:band, 300:], (255, 255, 255), 5).all()  # the rest of the band is white
    assert _near(px[band + 5:band + 20, 300:], GREY, 5).all()  # the image starts under it
    # the same under the image
    low = draw_detections(_grey(100, 50), [[10, 0, 40, 50]], ["1"], below=True)
    assert low.height > MIN_HEIGHT and _near(np.asarray(low)[MIN_HEIGHT:, 72:90], RED).any()


def test_labels_never_cover_each_other():
    font = _font(22)
    boxes = np.array([[10, 100, 200, 300], [20, 105, 210, 290], [15, 100, 100, 200],
                      [400, 100, 500, 300]], dtype=float)
    tabs = _place_labels(boxes, ["person 0.91", "dog 0.88", "cat 0.5", "far 0.7"],
                         [False] * 4, font, 22, 640)
    rects = list(tabs.values())
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
    assert tabs[0][3] == 100 and tabs[3][3] == 100  # free labels rest on their box's top edge
    assert tabs[1][3] <= tabs[0][1]  # a covered one moves up past the label it would cover


def test_the_banner_says_the_number_read():
    image = _grey(100, 50)
    plain = draw_detections(image, [[10, 20, 40, 45]], ["7 0.93"])
    read = draw_detections(image, [[10, 20, 40, 45]], ["7 0.93"], number="42", threshold=0.5)
    nothing = draw_detections(image, [], number="-1")
    banner = read.height - plain.height
    assert banner >= 24 and read.width == plain.width
    top = np.asarray(read)[:banner]
    dark = (top < 100).all(axis=-1)
    assert dark.sum() > 100  # "read: 42   (threshold 0.50)"
    assert _near(top, (255, 255, 255), 5).mean() > 0.8  # black on white, above the image
    assert np.array_equal(np.asarray(read)[banner:], np.asarray(plain))  # the picture is the same
    # "read: nothing" is a different, longer text than "read: 42" without the threshold
    bare = draw_detections(image, [], number="42")
    ink = [int((np.asarray(im)[:banner] < 100).all(axis=-1).any(axis=0).nonzero()[0].max())
           for im in (bare, nothing)]
    assert ink[1] > ink[0]


def test_the_banner_fits_a_narrow_image():
    narrow = draw_detections(torch.rand(3, 40, 24), [], number="12345", threshold=0.45)
    assert narrow.width == 216 and narrow.height > MIN_HEIGHT  # 24x40 scaled by 9
    banner = np.asarray(narrow)[: narrow.height - MIN_HEIGHT]
    dark = (banner < 128).all(axis=2)
    assert dark.any() and not dark[:, -4:].any()  # the text ends inside the picture


def test_scaling():
    # small images are scaled up to MIN_HEIGHT, keeping their shape; boxes scale with them
    small = draw_detections(torch.zeros(3, 24, 40, dtype=torch.uint8), [[0, 0, 10, 12]])
    assert small.size == (600, 360)
    assert _near(np.asarray(small)[10:170, 0], RED).all()  # the box's left edge, x 0
    big = draw_detections(_grey(800, 500), [[100, 100, 200, 200]])
    assert big.size == (800, 500)  # never scaled down
    assert draw_detections(_grey(80, 30), [], min_height=0).size == (80, 30)
    assert draw_detections(_grey(400, 100), [], fit=(200, 200)).size == (200, 50)
    assert draw_detections(_grey(40, 100), [], fit=(200, 200)).size == (80, 200)


def test_image_kinds_and_bad_arguments():
    grey = np.full((4, 6, 3), 128, np.uint8)
    for image in (grey, grey / 255.0, torch.from_numpy(grey).permute(2, 0, 1),
                  torch.from_numpy(grey).permute(2, 0, 1).float() / 255, Image.fromarray(grey),
                  grey[..., 0]):
        pil = to_pil(image)
        assert pil.mode == "RGB" and pil.size == (6, 4) and pil.getpixel((0, 0)) == GREY
    with pytest.raises(ValueError, match="2 labels for 1 boxes"):
        draw_detections(grey, [[0, 0, 2, 2]], ["a", "b"])
    with pytest.raises(ValueError, match="1 colors for 2 boxes"):
        draw_detections(grey, [[0, 0, 2, 2], [1, 1, 3, 3]], colors=["red"])
    # one colour for every box, as a name or an RGB tuple
    for colour in ("tab:green", (0.17, 0.63, 0.17)):
        px = np.asarray(draw_detections(grey, [[0, 0, 3, 3], [3, 0, 6, 3]], colors=colour))
        assert _near(px, (44, 160, 44)).sum() > 100


def test_grid_draws_every_panel(tmp_path):
    panels = [Panel(_grey(160, 50), [[5, 5, 25, 45]], ["1 .99"], title="#1"),
              Panel(_grey(120, 60), [[10, 10, 40, 55]], ["4 1.00"], colors="#00a651",
                    dashed=True, number="4", title="#2"),
              Panel(_grey(100, 50), title="#3")]
    out = draw_grid(panels, tmp_path / "sub" / "grid.png", title="three",
                    legend=[("a box", BOX_COLOR, False), ("dashed", "#00a651", True)])
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width >= 1000
        px = np.asarray(im.convert("RGB"))
    assert _near(px, RED).sum() > 200 and _near(px, (0x00, 0xA6, 0x51)).sum() > 100
    assert _near(px, GREY, 5).sum() > 50_000  # the three images
    assert not list((tmp_path / "sub").glob("*.tmp"))


def test_a_crowd_of_boxes_keeps_the_picture_its_size():
    # 100 boxes on one spot: labels move out at most two rows, then overlap; no tower of bands
    out = draw_detections(_grey(100, 50), [[10, 2, 40, 45]] * 100, ["3 0.08"] * 100)
    assert out.width == 720 and MIN_HEIGHT < out.height < MIN_HEIGHT + 4 * 30
