"""The device a command runs on, and its peak memory."""

from __future__ import annotations

import resource

import torch


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name} asked for, but CUDA is not available. Fix: use "
                           "--device cpu (train.device=cpu)")
    return device


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: GPU allocations on CUDA, resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
