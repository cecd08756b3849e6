"""Tests of the synthetic house-number generator (rcnnlab.data.synth)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rcnnlab.data import synth
from rcnnlab.reporting.samples import sample_grid

N_SAMPLES = 200  # enough for every digit count, every digit and the rarer effects to occur


@pytest.fixture(scope="module")
def samples() -> list[synth._Sample]:
    """Rendered samples with their (unlabelled) neighbours, shared by the statistical tests."""
    return [synth._render(np.random.default_rng([11, 0, i])) for i in range(N_SAMPLES)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny generated dataset (all three splits)."""
    return synth.generate_dataset(tmp_path_factory.mktemp("synth"), 12, 4, 5, seed=3)


def _files(json_path: Path) -> dict[str, bytes]:
    """The bytes of a split's json and of every image it lists."""
    tree = json.loads(json_path.read_text())
    files = {"annotations.json": json_path.read_bytes()}
    for image in tree["images"]:
        files[image["file_name"]] = (json_path.parent / image["file_name"]).read_bytes()
    return files


def test_same_seed_gives_identical_files_whatever_the_workers(tmp_path: Path) -> None:
    one = synth.generate_split(tmp_path / "a", "train", 20, seed=5)
    again = synth.generate_split(tmp_path / "b", "train", 20, seed=5)
    pooled = synth.generate_split(tmp_path / "c", "train", 20, seed=5, workers=2)
    assert len(_files(one)) == 21
    assert _files(one) == _files(again) == _files(pooled)


def test_different_seed_or_split_gives_different_images(tmp_path: Path) -> None:
    base = _files(synth.generate_split(tmp_path / "a", "train", 6, seed=5))
    other_seed = _files(synth.generate_split(tmp_path / "b", "train", 6, seed=6))
    other_split = _files(synth.generate_split(tmp_path / "c", "valid", 6, seed=5))
    for other in (other_seed, other_split):
        assert base["annotations.json"] != other["annotations.json"]
        assert all(base[name] != other[name] for name in base if name.endswith(".jpg"))


def test_split_json_is_valid_coco(dataset: dict[str, Path]) -> None:
    assert set(dataset) == {"train", "valid", "test"}
    for split, n_images in (("train", 12), ("valid", 4), ("test", 5)):
        path = dataset[split]
        assert path == path.parent.parent / split / "annotations.json"
        tree = json.loads(path.read_text())
        assert [im["id"] for im in tree["images"]] == list(range(1, n_images + 1))
        n_annotations = len(tree["annotations"])
        assert [a["id"] for a in tree["annotations"]] == list(range(1, n_annotations + 1))
        assert tree["info"]["seed"] == 3 and tree["info"]["version"] == synth.GENERATOR_VERSION
        assert tree["info"]["num_images"] == n_images
        assert tree["info"]["num_annotations"] == len(tree["annotations"])
        sizes = {}
        for im in tree["images"]:
            assert "/" not in im["file_name"]
            with Image.open(path.parent / im["file_name"]) as picture:
                assert picture.format == "JPEG" and picture.mode == "RGB"
                assert picture.size == (im["width"], im["height"])
            sizes[im["id"]] = (im["width"], im["height"])
        for ann in tree["annotations"]:
            x, y, w, h = ann["bbox"]
            width, height = sizes[ann["image_id"]]
            assert w > 0 and h > 0 and 0 <= x and x + w <= width and 0 <= y and y + h <= height
            assert ann["area"] == pytest.approx(w * h, abs=0.05)
            assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= 10
        image_ids = [a["image_id"] for a in tree["annotations"]]
        per_image = np.bincount(image_ids, minlength=n_images + 1)
        assert all(1 <= k <= 5 for k in per_image[1:])


def test_categories_name_the_digits(dataset: dict[str, Path]) -> None:
    tree = json.loads(dataset["test"].read_text())
    assert tree["categories"] == [{"id": d + 1, "name": str(d)} for d in range(10)]


def test_progress_counts_every_image(tmp_path: Path) -> None:
    calls: list[int] = []
    synth.generate_split(tmp_path, "valid", 7, progress=calls.append)
    assert sum(calls) == 7 and all(c == 1 for c in calls)


def test_unknown_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown split"):
        synth.generate_split(tmp_path, "validation", 1)


def test_render_sample_is_deterministic() -> None:
    a = synth.render_sample(np.random.default_rng(42))
    b = synth.render_sample(np.random.default_rng(42))
    assert a[0].tobytes() == b[0].tobytes() and a[1:] == b[1:]


def test_sizes_digit_counts_and_variety(samples: list[synth._Sample]) -> None:
    widths = np.array([s.image.size[0] for s in samples])
    heights = np.array([s.image.size[1] for s in samples])
    counts = np.array([len(s.digits) for s in samples])
    assert heights.min() >= 30 and heights.max() <= 120 and widths.max() <= 300
    assert heights.min() < 40 and heights.max() > 100  # the whole height range is used
    assert set(counts) == {1, 2, 3, 4, 5}
    assert {d for s in samples for d in s.digits} == set(range(10))
    assert all(len(s.boxes) == len(s.digits) for s in samples)
    # The number fills most of the image height, as in SVHN's cropped format.
    fill = [max(b[3] - b[1] for b in s.boxes) / s.image.size[1] for s in samples]
    assert 0.3 < np.median(fill) < 0.9


def test_boxes_inside_positive_and_left_to_right(samples: list[synth._Sample]) -> None:
    for s in samples:
        width, height = s.image.size
        for x0, y0, x1, y1 in s.boxes:
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            assert (x1 - x0) * (y1 - y0) >= 4
        starts = [b[0] for b in s.boxes]
        assert starts == sorted(starts)


def test_partial_neighbours_drawn_but_never_labelled(samples: list[synth._Sample]) -> None:
    with_neighbours = [s for s in samples if s.neighbours]
    assert len(with_neighbours) > N_SAMPLES // 10  # they do occur
    for s in samples:
        width = s.image.size[0]
        # A labelled digit is never cut by the left/right border (1 px tolerance)...
        assert all(b[0] >= 1 and b[2] <= width - 1 for b in s.boxes)
        # ...while every neighbour is, showing at most half its width.
        for x0, _, x1, _ in s.neighbours:
            assert x0 < 0 or x1 > width
            visible = min(x1, width) - max(x0, 0)
            assert 0 < visible <= 0.5 * (x1 - x0)


def _luma(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), np.float32)


def test_boxes_cover_the_ink(samples: list[synth._Sample]) -> None:
    """Inside a box, pixels differ from the local background far more than just around it.

    The local background of a box is the median of a ring a few pixels wide around it; the
    ring also holds the spaces between digits, so a box off its digit would score like its ring.
    """
    ratios = []
    for s in samples:
        gray = _luma(s.image)
        height, width = gray.shape
        labelled = np.zeros_like(gray, bool)
        for x0, y0, x1, y1 in s.boxes:
            labelled[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] = True
        for x0, y0, x1, y1 in s.boxes:
            pad = max(2, round(0.15 * (y1 - y0)))
            ys, xs = np.mgrid[0:height, 0:width] + 0.5
            near = (xs > x0 - pad) & (xs < x1 + pad) & (ys > y0 - pad) & (ys < y1 + pad)
            inside = (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
            ring = near & ~labelled
            if ring.sum() < 10:
                continue
            background = np.median(gray[ring])
            ink = np.abs(gray[inside] - background).mean()
            around = np.abs(gray[ring] - background).mean()
            ratios.append(ink / max(around, 1.0))
    ratios = np.array(ratios)
    assert len(ratios) > N_SAMPLES
    assert np.median(ratios) > 3.0
    assert (ratios > 1.5).mean() > 0.9


def _ink_box(mask: np.ndarray, level: int) -> np.ndarray:
    ys, xs = np.nonzero(mask >= level)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


def test_boxes_hug_the_warped_ink() -> None:
    """Each box is the bounding box of its own digit's ink after the real image warp.

    It holds all the solid ink (coverage >= 50%) and stays within the faint edge (>= 12%): a
    sharp tip thinned below 50% by resampling is still visible, and still inside the box.
    """
    solid_errors = []
    for i in range(60):
        rng = np.random.default_rng([7, 2, i])
        layout = synth._layout(rng)
        matrix, boxes = synth._choose_warp(rng, layout)
        for placed, box in zip(layout.digits, boxes, strict=True):
            ink = np.zeros((layout.height, layout.width), np.uint8)
            synth._paste_max(ink, placed.mask, placed.x, placed.y)
            warped = synth._warp_canvas(synth._Canvas(ink, None, None), matrix).ink
            solid, faint = _ink_box(warped, 128), _ink_box(warped, 32)
            sign = np.array([1, 1, -1, -1])  # positive = box edge inside the other box
            assert (sign * (box - solid) <= 1.0).all()
            assert (sign * (box - faint) >= -1.0).all()
            solid_errors.append(np.abs(box - solid))
    assert len(solid_errors) > 100
    assert np.percentile(solid_errors, 95) <= 1.0


def test_ink_contrast_is_enforced() -> None:
    """Ink is moved to the asked luminance contrast, or to the most the ground allows."""
    rng = np.random.default_rng(0)
    for _ in range(2000):
        ink, ground = synth._random_colour(rng), synth._random_colour(rng)
        contrast = rng.uniform(0.1, 0.7)
        out = synth._with_contrast(ink, ground, contrast)
        y_ground = synth._luma(ground)
        reachable = min(contrast, max(y_ground, 1.0 - y_ground))
        assert abs(synth._luma(out) - y_ground) >= reachable - 1e-3
        assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6


def test_only_fonts_that_draw_digits_are_used() -> None:
    fonts = synth._fonts()
    assert len(fonts) >= 1
    names = {f.path.name for f in fonts}
    assert not names & {"LastResortHE-Regular.ttf", "cmex10.ttf", "cmsy10.ttf"}
    for font in fonts:
        shapes = {g.mask.tobytes() for g in font.glyphs}
        assert len(shapes) == 10  # ten different glyphs, not one fallback box


def test_saved_sample_is_the_image_as_written(tmp_path: Path) -> None:
    json_path = synth.generate_split(tmp_path, "valid", 3, seed=4)
    doc = json.loads(json_path.read_text())
    image, boxes, digits = synth.saved_sample(4, "valid", 2)
    with Image.open(json_path.parent / doc["images"][2]["file_name"]) as saved:
        assert np.array_equal(np.asarray(image), np.asarray(saved.convert("RGB")))
    anns = [a for a in doc["annotations"] if a["image_id"] == doc["images"][2]["id"]]
    assert len(boxes) == len(digits) == len(anns)
    for (x0, y0, x1, y1), ann in zip(boxes, anns, strict=True):
        assert ann["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.01)
    with pytest.raises(ValueError, match="unknown split"):
        synth.saved_sample(4, "validation", 0)


def test_sample_grid_writes_a_picture(tmp_path: Path) -> None:
    out = sample_grid(tmp_path / "grid.png", n=6, seed=1)
    with Image.open(out) as grid:
        assert grid.format == "PNG"
        pixels = np.asarray(grid.convert("RGB")).astype(int)
    box = np.array([0xFF, 0x2D, 0x55])  # drawing.BOX_COLOR
    assert (np.abs(pixels - box).sum(axis=-1) < 40).sum() > 100  # the boxes are drawn
