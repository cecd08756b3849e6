"""Reduced-precision inference (`eval.amp`): the backbone under `torch.autocast`, the heads in
float32.

The backbone (ResNet / MobileNet body and FPN) holds nearly all of a detector's FLOPs and is
what bf16 / fp16 speed up. The heads stay in float32 on purpose: torchvision's box coder casts
the anchors and proposals to the dtype of the regression output, and bf16's 8-bit mantissa
would round box coordinates near 800 px to steps of 4 px.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import Tensor, nn

from rcnnlab.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
AMP_MODES = ("off", *DTYPES)


def check_amp(mode: str, device: torch.device, key: str) -> None:
    """Refuse an unknown mode, and fp16 off CUDA (the CPU has no fp16 autocast worth having);
    `key` names the config option in the message."""
    if mode not in AMP_MODES:
        raise ConfigError(f"{key}={mode!r}: use off, bf16 or fp16")
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError(f"{key}=fp16 on {device}: fp16 autocast needs CUDA. Fix: "
                          f"{key}=bf16 on the CPU (or {key}=off)")


class AutocastBackbone(nn.Module):
    """A backbone whose forward runs under autocast and returns float32 feature maps."""

    def __init__(self, backbone: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.body = backbone  # registered, so the view's parameters are the model's
        self.out_channels = backbone.out_channels
        self.device_type, self.dtype = device_type, dtype

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """The backbone's features, computed in reduced precision, handed on in float32."""
        with torch.autocast(self.device_type, dtype=self.dtype):
            features = self.body(images)
        return OrderedDict((k, v.float()) for k, v in features.items())


def with_autocast_backbone(model: nn.Module, mode: str) -> nn.Module:
    """A view of the detector `model` whose backbone runs in `mode` (bf16 / fp16; `off` returns
    `model`). Like `inference.predictor.with_box_settings`, the view shares every parameter with
    the model and the model itself is not changed."""
    if mode == "off":
        return model
    device = next(model.parameters()).device
    check_amp(mode, device, "eval.amp")
    view = copy.copy(model)
    view._modules = dict(model._modules)
    view.backbone = AutocastBackbone(model.backbone, device.type, DTYPES[mode])
    return view
