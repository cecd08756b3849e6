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
AMP_MODES = ("off", "auto", *DTYPES)
# /proc/cpuinfo flags of CPUs that compute bf16 natively (x86: AVX512-BF16, AMX; Arm: BF16)
_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def native_bf16(device: torch.device) -> str | None:
    """Why `device` computes bf16 natively (a CUDA GPU that supports it; a CPU with one of
    `_BF16_FLAGS`, read from /proc/cpuinfo), or None. Without native support bf16 autocast
    is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device) if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    flags = cpu_flags()
    found = [flag for flag in _BF16_FLAGS if flag in flags]
    return f"CPU flags {', '.join(found)}" if found else None


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 `flags`, Arm `Features`); empty where
    there is no such file (not Linux: no way to tell, so `auto` stays float32)."""
    try:
        with open("/proc/cpuinfo") as info:
            return {word for line in info if line.startswith(("flags", "Features"))
                    for word in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def resolve_amp(mode: str, device: torch.device) -> str:
    """The precision `mode` means on `device`: `auto` is bf16 where the device computes it
    natively (`native_bf16`), else off; the others are themselves."""
    if mode != "auto":
        return mode
    return "bf16" if native_bf16(device) else "off"


def check_amp(mode: str, device: torch.device, key: str) -> None:
    """Refuse an unknown mode, and fp16 off CUDA (the CPU has no fp16 autocast worth having);
    `key` names the config option in the message."""
    if mode not in AMP_MODES:
        raise ConfigError(f"{key}={mode!r}: use off, auto, bf16 or fp16")
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
    """A view of the detector `model` whose backbone runs in `mode` (bf16 / fp16 / auto, see
    `resolve_amp`; `off` returns `model`). Like `inference.predictor.with_box_settings`, the
    view shares every parameter with the model and the model itself is not changed."""
    if mode == "off":
        return model
    parameter = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    if parameter is None:  # an exported graph (auto: runs as exported) or a stand-in
        return model
    device = parameter.device
    check_amp(mode, device, "eval.amp")
    mode = resolve_amp(mode, device)
    if mode == "off":
        return model
    view = copy.copy(model)
    view._modules = dict(model._modules)
    view.backbone = AutocastBackbone(model.backbone, device.type, DTYPES[mode])
    return view
