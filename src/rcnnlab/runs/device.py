"""The device a command runs on, and its peak memory."""

from __future__ import annotations

import resource

import torch

from rcnnlab.errors import DeviceError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device {name!r} is not a device name. Fix: use auto, cpu, cuda or "
                          "cuda:N (--device, train.device)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name} asked for, but CUDA is not available. Fix: use "
                           "--device cpu (train.device=cpu)")
    return device


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: GPU allocations on CUDA, resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def available_memory_bytes(device: torch.device) -> int | None:
    """Memory a run can still take on `device`: free GPU memory on CUDA, the kernel's
    MemAvailable on the CPU (Linux; None where it cannot be read)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
