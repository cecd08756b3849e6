"""The machine and the package versions a run used, for run records and benchmarks."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import torch


def machine_description() -> str:
    """CPU model, thread count and torch version (and the GPU when one is used)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_rows(device: str) -> list[list[str]]:
    """The hardware and software of this process as [label, value] rows; ``device`` is the
    device it trains or evaluates on. Training saves them in ``environment.json`` so a run
    record rewritten elsewhere still names the machine that trained."""
    rows = [["machine", machine_description()],
            ["logical CPUs", str(os.cpu_count())],
            ["torch threads", str(torch.get_num_threads())],
            ["OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "(unset)")],
            ["device", device],
            ["CUDA", f"{torch.version.cuda} ({torch.cuda.device_count()} GPU(s) visible)"
             if torch.cuda.is_available() else "not available"]]
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        rows.append([f"GPU {i}", f"{props.name}, {props.total_memory / 2**30:.0f} GiB"])
    rows += [["OS", platform.platform()], ["Python", platform.python_version()]]
    rows += [[pkg, _version(pkg)] for pkg in ("torch", "torchvision", "numpy", "faster-coco-eval",
                                               "pycocotools", "matplotlib", "rcnnlab")]
    return rows
