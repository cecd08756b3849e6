"""The machine a plan is made for: the device, whether it computes bf16 natively, its memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rcnnlab.models.precision import native_bf16
from rcnnlab.runs.device import available_memory_bytes, resolve_device
from rcnnlab.runs.environment import machine_description


@dataclass(frozen=True)
class Hardware:
    """What the plan's precision, model width and batch size depend on."""

    device: str  # "cpu", "cuda:0"
    name: str  # the processor or GPU in words
    bf16: str | None  # why the device computes bf16 natively, or None
    memory_bytes: int | None  # memory a run can still take (None: unknown)

    @property
    def gpu(self) -> bool:
        """Whether the device is a CUDA GPU."""
        return self.device.startswith("cuda")

    @classmethod
    def of(cls, device: str = "auto") -> Hardware:
        """The machine `device` names (`auto`, `cpu`, `cuda`, `cuda:N`)."""
        dev = resolve_device(device)
        if dev.type == "cuda":
            dev = torch.device("cuda", dev.index if dev.index is not None else 0)
            name = torch.cuda.get_device_name(dev)
        else:
            name = machine_description()
        return cls(str(dev), name, native_bf16(dev), available_memory_bytes(dev))
