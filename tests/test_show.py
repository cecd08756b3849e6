"""Augmented samples (`rcnnlab data show`): boxes drawn where the json puts them, names from the
categories, dropped boxes counted, and the same seed giving the same samples and the same PNG
(`rcnnlab.reporting.samples.render_augmented_grid`)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from rcnnlab.data.coco import CocoDetection, load_coco
from rcnnlab.data.show import augmented_sample, describe_transforms, label_names, pick_samples
from rcnnlab.data.transforms import build_train_transforms
from rcnnlab.reporting.samples import render_augmented_grid

from .conftest import shared_path, write_coco


@pytest.fixture
def named_coco(tmp_path):
    """Three 60x40 noise images; categories 3 'cat' and 7 'dog' (labels 1 and 2)."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 60, "height": 40} for i in (1, 2, 3)]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 5, 10, 20]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [20.5, 4, 10, 21]},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [40, 10, 15, 15]},
    ]
    path = write_coco(tmp_path / "named", images=images, annotations=anns,
                      categories=[{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}])
    rng = np.random.default_rng(0)
    for img in images:  # texture, so that augmentations visibly change the pixels
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(
            path.parent / img["file_name"])
    return load_coco(path)


def test_identity_transform_draws_the_json_boxes_with_names(named_coco):
    assert label_names(named_coco) == {1: "cat", 2: "dog"}
    dataset = CocoDetection(named_coco, build_train_transforms(enabled=False))
    sample = augmented_sample(dataset, 0, seed=0)
    assert sample.image.dtype == torch.float32 and sample.image.shape == (3, 40, 60)
    assert 0.0 <= sample.image.min() and sample.image.max() <= 1.0
    assert sample.boxes.tolist() == [[5, 5, 15, 25], [20.5, 4, 30.5, 25]]  # xywh -> xyxy
    assert sample.names == ["dog", "cat"]
    assert (sample.image_id, sample.boxes_before) == (1, 2)
    custom = augmented_sample(dataset, 0, seed=0, names={1: "Cat", 2: "Dog"})
    assert custom.names == ["Dog", "Cat"]


def test_multiscale_rescales_image_and_boxes_to_a_drawn_short_side(named_coco):
    dataset = CocoDetection(named_coco, build_train_transforms(enabled=False))
    sides = set()
    for seed in range(6):
        sample = augmented_sample(dataset, 0, seed=seed, short_sides=(20, 80))
        side = sample.image.shape[1]  # the 60x40 image's short side is its height
        sides.add(side)
        assert sample.image.shape == (3, side, side * 3 // 2)
        # 5,5,15,25 (xyxy) scaled by side / 40
        assert sample.boxes[0].tolist() == pytest.approx([5 * side / 40, 5 * side / 40,
                                                          15 * side / 40, 25 * side / 40])
    assert sides == {20, 80}
    # The long side stays under max_size.
    capped = augmented_sample(dataset, 0, seed=0, short_sides=(80,), max_size=90)
    assert capped.image.shape == (3, 60, 90)


def test_boxes_that_leave_the_image_are_counted(named_coco):
    # keep x in [20, 40): the box at x 5..15 leaves, the one at 20.5..30.5 moves to 0.5..10.5
    crop = T.Compose([T.CenterCrop((40, 20)), T.SanitizeBoundingBoxes(min_size=1.0)])
    sample = augmented_sample(CocoDetection(named_coco, crop), 0, seed=0)
    assert sample.boxes.tolist() == [[0.5, 4, 10.5, 25]] and sample.names == ["cat"]
    assert sample.boxes_before == 2
    assert sample.image.dtype == torch.float32  # uint8 output shown as [0, 1] floats


def test_same_seed_same_samples_and_callers_rng_untouched(named_coco):
    aug = build_train_transforms(hsv_prob=1.0, affine_prob=1.0)
    state = torch.get_rng_state()
    a = pick_samples(named_coco, aug, n=3, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b = pick_samples(named_coco, aug, n=3, seed=5)
    c = pick_samples(named_coco, aug, n=3, seed=6)
    assert sorted(s.image_id for s in a) == [1, 2, 3]  # n distinct images
    for x, y in zip(a, b, strict=True):
        assert x.image_id == y.image_id and x.names == y.names
        assert torch.equal(x.image, y.image) and torch.equal(x.boxes, y.boxes)
    by_id = {s.image_id: s for s in c}
    assert any(not torch.equal(s.image, by_id[s.image_id].image) for s in a)


def test_describe_transforms():
    assert describe_transforms(build_train_transforms()) == "ColorJitter p=0.5, RandomAffine p=0.5"
    assert describe_transforms(build_train_transforms(enabled=False)) == "no augmentation"
    assert describe_transforms(None) == "no augmentation"


def test_grid_png_written_and_reproducible(named_coco, tmp_path):
    aug = build_train_transforms()
    first = render_augmented_grid(named_coco, aug, tmp_path / "out" / "grid.png", n=4, seed=1)
    again = render_augmented_grid(named_coco, aug, tmp_path / "again.png", n=4, seed=1)
    assert first.read_bytes().startswith(b"\x89PNG") and first.stat().st_size > 5_000
    assert first.read_bytes() == again.read_bytes()


def test_real_orand_car_a(tmp_path):
    data = load_coco(shared_path("orand-car-a", "instances_train.json"))
    plain = CocoDetection(data, build_train_transforms(enabled=False))
    sample = augmented_sample(plain, 0, seed=0)
    want = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in data.annotations[0])]
    assert sample.boxes.tolist() == want
    assert sample.names == [c["name"] for c in (
        {c["id"]: c for c in data.categories}[a["category_id"]] for a in data.annotations[0])]
    png = render_augmented_grid(data, build_train_transforms(), tmp_path / "orand.png", n=4)
    assert png.stat().st_size > 10_000
