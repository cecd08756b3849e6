"""Augmentation: boxes after each geometric op against hand-worked values; colour ops never
move boxes; collapsed boxes are dropped and counted."""

import math

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from rcnnlab.data.transforms import (
    SVHN_COLOUR_POLICY,
    CountDropped,
    RandomWindow,
    SVHNColourPolicy,
    build_train_transforms,
    colour_op,
)

H, W = 40, 100


def sample(boxes):
    image = torch.randint(0, 256, (3, H, W), dtype=torch.uint8)
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32),
                                                format="XYXY", canvas_size=(H, W)),
              "labels": torch.arange(1, len(boxes) + 1)}
    return image, target


def plain(boxes) -> list[list[float]]:
    return [[round(v, 3) for v in b] for b in boxes.as_subclass(torch.Tensor).tolist()]


def test_flip_mirrors_about_the_width():
    image, target = sample([[10, 5, 30, 35]])
    _, out = T.RandomHorizontalFlip(p=1.0)(image, target)
    assert plain(out["boxes"]) == [[70, 5, 90, 35]]  # x -> W - x


def test_rotation_by_90_degrees_on_a_square_image():
    image = torch.zeros(3, 100, 100, dtype=torch.uint8)
    box = tv_tensors.BoundingBoxes(torch.tensor([[10.0, 20.0, 30.0, 60.0]]), format="XYXY",
                                   canvas_size=(100, 100))
    _, out = T.RandomAffine(degrees=(90, 90))(image, {"boxes": box, "labels": torch.tensor([1])})
    # RandomAffine's angle goes to F.affine, whose rotation is clockwise (on screen, y down):
    # about the centre (50, 50), (x, y) -> (100 - y, x). The 20x40 box (x 10..30, y 20..60)
    # becomes 40x20: corners (10, 20) -> (80, 10) and (30, 60) -> (40, 30).
    assert plain(out["boxes"])[0] == pytest.approx([40, 10, 80, 30], abs=1e-3)


def test_shear_encloses_the_moved_corners():
    image, target = sample([[40, 10, 60, 30]])
    _, out = T.RandomAffine(degrees=0, shear=(10, 10, 0, 0))(image, target)
    # x-shear about the centre (50, 20): x' = x - tan(10°) * (y - 20), y unchanged. The corner
    # (40, 30) moves left by 10 tan(10°), (60, 10) moves right by as much.
    t = 10 * math.tan(math.radians(10))
    x1, y1, x2, y2 = plain(out["boxes"])[0]
    assert (x1, y1, x2, y2) == pytest.approx((40 - t, 10, 60 + t, 30), abs=0.6)


def test_translation_pushing_a_box_half_outside_is_clipped():
    image, target = sample([[70, 10, 90, 30]])
    # The affine RandomAffine applies, with the translation it would draw fixed at +20 px in x.
    moved = TF.affine(target["boxes"], angle=0.0, translate=[20, 0], scale=1.0, shear=[0.0, 0.0])
    image, clamped = T.ClampBoundingBoxes()(image, {"boxes": moved, "labels": target["labels"]})
    assert plain(clamped["boxes"]) == [[90, 10, 100, 30]]  # 90..110 clipped to the width


def test_collapsed_boxes_are_dropped_and_counted():
    image, target = sample([[10, 5, 30, 35], [99.5, 5, 100, 35]])
    _, out = CountDropped(min_size=1.0)(image, target)
    assert plain(out["boxes"]) == [[10, 5, 30, 35]]
    assert out["labels"].tolist() == [1] and out["boxes_dropped"] == 1


def test_colour_policy_leaves_boxes_and_labels_untouched():
    torch.manual_seed(0)
    policy = SVHNColourPolicy(p=1.0)
    changed = 0
    for _ in range(30):
        image, target = sample([[10, 5, 30, 35], [40, 2, 60, 38]])
        boxes, labels = target["boxes"].clone(), target["labels"].clone()
        new_image, out = policy(image.clone(), target)
        assert torch.equal(out["boxes"], boxes) and torch.equal(out["labels"], labels)
        changed += not torch.equal(new_image, image)
    assert changed > 10  # it does change pixels


def test_policy_is_torchvisions_svhn_policy_without_geometric_ops():
    colour = {"Invert", "Equalize", "AutoContrast", "Solarize", "Contrast", "Brightness",
              "Color", "Posterize", "Sharpness"}
    reference = T.AutoAugment(T.AutoAugmentPolicy.SVHN)._policies
    kept = [tuple(op for op in sub if op[0] in colour) for sub in reference]
    assert list(SVHN_COLOUR_POLICY) == [sub for sub in kept if sub]
    assert len(SVHN_COLOUR_POLICY) == 23


def test_colour_ops_match_hand_worked_values():
    image = torch.tensor([[[0, 100, 200, 255]]], dtype=torch.uint8).expand(3, 1, 4).clone()
    assert colour_op(image, "Invert", None)[0, 0].tolist() == [255, 155, 55, 0]
    # Solarize bin 6: threshold 255 * (1 - 6/9) = 85: pixels >= 85 are inverted.
    assert colour_op(image, "Solarize", 6)[0, 0].tolist() == [0, 155, 55, 0]
    with pytest.raises(ValueError, match="unknown colour op"):
        colour_op(image, "Rotate", 3)


def test_pipeline_keeps_boxes_valid_and_flip_warns_on_digits(caplog):
    transforms = build_train_transforms(affine_prob=1.0, degrees=10, svhn_policy_prob=1.0,
                                        flip_prob=0.5, digit_classes=True)
    assert "mirrored digit" in caplog.text
    torch.manual_seed(1)
    for _ in range(20):
        image, out = transforms(*sample([[10, 5, 30, 35], [60, 8, 80, 38]]))
        assert image.dtype == torch.float32 and image.max() <= 1
        boxes = out["boxes"].as_subclass(torch.Tensor)
        assert len(boxes) + out["boxes_dropped"] == 2
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes[:, [0, 2]] <= W).all() and (boxes[:, [1, 3]] <= H).all()


def test_the_training_window_cuts_boxes_with_the_pixels(monkeypatch):
    image, target = sample([[5, 5, 15, 25],      # inside the window once shifted
                            [28, 10, 36, 30],    # 2 of its 8 px wide inside: dropped
                            [22, 2, 32, 12],     # 8 of its 10 px inside: clipped, kept
                            [60, 5, 70, 25]])    # outside
    draws = iter([torch.tensor(0), torch.tensor(0)])  # top 0, left 0
    monkeypatch.setattr(torch, "randint", lambda *a, **k: next(draws))
    window = RandomWindow(30)
    out, t = window(image, {**target, "boxes_dropped": 1})
    assert out.shape == (3, 30, 30) and torch.equal(out, image[:, :30, :30])
    assert t["boxes"].tolist() == [[5, 5, 15, 25], [22, 2, 30, 12]]
    assert t["boxes"].canvas_size == (30, 30)
    assert t["labels"].tolist() == [1, 3]
    assert t["boxes_dropped"] == 1 + 2  # earlier drops kept, the cut and the outside one added


def test_the_training_window_moves_boxes_by_its_offset(monkeypatch):
    image, target = sample([[50, 10, 60, 30]])
    draws = iter([torch.tensor(5), torch.tensor(40)])  # top 5, left 40
    monkeypatch.setattr(torch, "randint", lambda *a, **k: next(draws))
    out, t = RandomWindow(32)(image, target)
    assert torch.equal(out, image[:, 5:37, 40:72])
    assert t["boxes"].tolist() == [[10, 5, 20, 25]]


def test_an_image_within_the_window_passes_untouched():
    image, target = sample([[5, 5, 15, 25]])
    out, t = RandomWindow(128)(image, target)
    assert out is image and t is target


def test_the_window_stays_when_augmentation_is_off():
    image, target = sample([[5, 5, 15, 25]])
    off = build_train_transforms(crop_size=32, augmenting=False)
    out, t = off(image, target)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    disabled = build_train_transforms(crop_size=32, enabled=False)
    assert disabled(image, target)[0].shape == (3, 32, 32)
    plain = build_train_transforms(augmenting=False)  # no window: the conversion alone
    assert plain(image, target)[0].shape == (3, H, W)
