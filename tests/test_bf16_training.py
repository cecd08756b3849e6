"""Training in bf16 (`train.amp=bf16`) is as safe as float32: the heads may compute in bf16, but
anchors, proposals, their encoding, the samplers and the losses stay float32.

The failure this guards against came from real dense data: an augmented 640x640 screenshot of
the shared number-extraction set whose affine cut a digit's box at the bottom edge, leaving it
1.5 px high. torchvision casts the ground-truth boxes to the proposals' dtype; bf16 spaces
coordinates 4 px apart between 512 and 1024, so that box became 0 px high and its regression
target (a division by its height) NaN: `loss_box_reg` nan at the first steps.
"""

from __future__ import annotations

import pytest
import torch

from rcnnlab.data.coco import CocoDetection, load_coco
from rcnnlab.data.transforms import to_model_input
from rcnnlab.engine.precision import MixedPrecision
from rcnnlab.models.architecture import build_model

from .conftest import shared_path


@pytest.fixture(scope="module")
def dense_sample():
    """Two real 640x640 images of the dense number-extraction set with their digit boxes."""
    data = load_coco(f"{shared_path('number-extraction-yolo', 'data.yaml')}:val")
    dataset = CocoDetection(data, transforms=to_model_input())
    return [dataset[i] for i in (36, 0)], len(data.categories)


def _model(num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    # a box batch large enough that every positive RoI, the ground-truth boxes among them, is
    # sampled: the test does not depend on the sampler's draw
    return build_model(arch="resnet18_fpn", num_classes=num_classes + 1, native_size=True,
                       fpn_channels=128, roi_output_size=5, box_batch_size_per_image=512).train()


def _cut_at_bottom(target: dict) -> dict:
    """The target with one more box: the last 1.5 px of a digit the image's edge cuts off."""
    x1, _, x2, _ = target["boxes"][0].tolist()
    boxes = torch.cat([target["boxes"].as_subclass(torch.Tensor),
                       torch.tensor([[x1, 638.5, x2, 640.0]])])
    return {**target, "boxes": boxes, "labels": torch.cat([target["labels"], target["labels"][:1]])}


def test_a_box_cut_at_the_image_edge_trains_in_bf16(dense_sample):
    samples, num_classes = dense_sample
    model = _model(num_classes)
    images = [image for image, _ in samples]
    targets = [_cut_at_bottom(target) for _, target in samples]
    with MixedPrecision("bf16", torch.device("cpu")).autocast():
        losses = model(images, targets)
    for key, value in losses.items():
        assert torch.isfinite(value).all(), (key, value)
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    total.backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_box_arithmetic_stays_float32_under_autocast(dense_sample):
    samples, num_classes = dense_sample
    model = _model(num_classes)
    seen = []
    for coder in (model.rpn.box_coder, model.roi_heads.box_coder):
        encode = coder.encode_single

        def spy(reference, proposals, encode=encode):
            seen.append((reference.dtype, proposals.dtype))
            return encode(reference, proposals)

        coder.encode_single = spy
    with MixedPrecision("bf16", torch.device("cpu")).autocast():
        losses = model([samples[0][0]], [samples[0][1]])
    assert len(seen) == 2  # the RPN's targets against its anchors, the RoI head's
    assert all(dtypes == (torch.float32, torch.float32) for dtypes in seen), seen
    assert all(v.dtype in (torch.float32, torch.float64) for v in losses.values())
    # the backbone itself did compute in bf16
    features = {}
    model.backbone.register_forward_hook(lambda m, i, out: features.update(out))
    with MixedPrecision("bf16", torch.device("cpu")).autocast():
        model([samples[0][0]], [samples[0][1]])
    assert all(f.dtype == torch.bfloat16 for f in features.values())


@pytest.mark.parametrize(("folder", "name", "key"), [
    ("orand-car-a", "instances_train.json", ""),
    ("building-characters-yolo", "data.yaml", ""),
    ("number-extraction-yolo", "data.yaml", ":val"),
])
def test_the_plan_trains_in_bf16_on_every_shared_set(folder, name, key, tmp_path):
    """A few bf16 training steps of the plan on each real shape of data: the loop stops with
    'the loss became nan' at the first non-finite loss, so finishing is the check."""
    import csv
    import math

    from rcnnlab import api
    from rcnnlab.engine.progress import ProgressReporter

    path = f"{shared_path(folder, name)}{key}"
    cfg = api.configure(None, [*api.data_overrides(path), "train.amp=bf16", "eval.amp=bf16",
                               "train.epochs=1", "train.iters_per_epoch=3",
                               "train.time_budget=null", "train.record=false",
                               f"out_dir={tmp_path}", "name=bf16"])
    fit = api.train(cfg, reporter=ProgressReporter(quiet=True))
    row = next(csv.DictReader((fit.run_dir / "metrics.csv").open()))
    for key in ("loss", "loss_cls", "loss_bbox", "loss_anchor", "val_loss"):
        assert math.isfinite(float(row[key])), (key, row[key])
