"""Reduced-precision inference (eval.amp): the backbone in bf16, the heads and boxes in float32;
`auto` precision (train.amp, eval.amp): bf16 only where the CPU computes it natively."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rcnnlab.engine.precision import MixedPrecision
from rcnnlab.errors import ConfigError
from rcnnlab.inference.predictor import Predictor
from rcnnlab.models import precision
from rcnnlab.models.architecture import build_model
from rcnnlab.models.precision import AutocastBackbone, with_autocast_backbone


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    model = build_model(arch="resnet18_fpn", num_classes=11, box_score_thresh=0.0)
    return model.eval()


def test_bf16_backbone_view_shares_weights_and_returns_float32(detector):
    view = with_autocast_backbone(detector, "bf16")
    assert isinstance(view.backbone, AutocastBackbone)
    assert not isinstance(detector.backbone, AutocastBackbone)  # the model is not changed
    ours = dict(view.named_parameters())
    for name, p in detector.backbone.named_parameters():
        assert ours[f"backbone.body.{name}"] is p
    images = torch.rand(1, 3, 96, 160)
    with torch.no_grad():
        full = detector.backbone(images)
        half = view.backbone(images)
    for key in full:
        assert half[key].dtype == torch.float32
        err = (half[key] - full[key]).norm() / full[key].norm()
        assert err < 0.05, (key, err)  # bf16 keeps ~3 significant digits
    assert with_autocast_backbone(detector, "off") is detector


def test_bf16_predictor_detects_in_float32(detector):
    images = [torch.rand(3, 120, 200), torch.rand(3, 100, 180)]
    with torch.no_grad():
        out = Predictor(detector, amp="bf16")(images)
        ref = Predictor(detector)(images)
    assert len(out) == 2
    for o, r in zip(out, ref, strict=True):
        assert o["boxes"].dtype == torch.float32 and o["scores"].dtype == torch.float32
        assert len(o["boxes"]) > 0 and len(r["boxes"]) > 0
        # the best box agrees to a pixel or so: proposals were decoded in float32
        assert torch.allclose(o["boxes"][0], r["boxes"][0], atol=4.0), (o["boxes"][0],
                                                                       r["boxes"][0])


def test_fp16_inference_on_cpu_is_refused(detector):
    with pytest.raises(ConfigError, match="eval.amp=fp16 on cpu: fp16 autocast needs CUDA. "
                                          "Fix: eval.amp=bf16"):
        Predictor(detector, amp="fp16")


@pytest.mark.parametrize("flags,expected", [
    ({"avx512f", "avx512_bf16"}, "bf16"),   # AMD Zen 4, Intel Cooper Lake
    ({"amx_tile", "amx_bf16"}, "bf16"),     # Intel Sapphire Rapids
    ({"asimd", "bf16"}, "bf16"),            # Arm (Graviton 3, Neoverse V1)
    ({"avx2", "avx512f"}, "off"),           # no native bf16: autocast would be emulated
    (set(), "off"),                         # flags unknown (not Linux)
])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    cpu = torch.device("cpu")
    assert precision.resolve_amp("auto", cpu) == expected
    assert MixedPrecision("auto", cpu).mode == expected
    assert precision.resolve_amp("off", cpu) == "off"  # the others are themselves
    assert precision.resolve_amp("bf16", cpu) == "bf16"


def test_auto_inference_follows_the_cpu(detector, monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    assert isinstance(with_autocast_backbone(detector, "auto").backbone, AutocastBackbone)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    assert with_autocast_backbone(detector, "auto") is detector


def test_cpu_flags_reads_this_machine():
    flags = precision.cpu_flags()
    if not Path("/proc/cpuinfo").is_file():
        assert flags == set()
    else:
        assert flags, "a Linux machine lists its CPU flags in /proc/cpuinfo"
