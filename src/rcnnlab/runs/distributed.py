"""Data-parallel training and prediction over `torch.distributed`, as `torchrun` starts it.

`torchrun --nproc_per_node N -m rcnnlab train ...` (or `predict`, `evaluate`) starts N
processes with `WORLD_SIZE`, `RANK`, `LOCAL_RANK` (and the rendezvous) in their environment;
`init_distributed` joins them into one process group: NCCL between GPUs, gloo on the CPU.
Without `WORLD_SIZE` nothing is initialised and every helper here is the single-process
identity, so that path is unchanged.

Rank 0 is the main process: it alone writes the run folder and logs. The other ranks may run on
machines without that folder (multi-node), so what they need of it (a resumed run's last.pt, a
decision) reaches them by `broadcast_object`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from rcnnlab.errors import DeviceError, UserError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Seeds of rank r's random streams: train.seed + r * RANK_SEED_STRIDE (rank 0 keeps train.seed).
RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank, rank on its machine, number of processes."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1

    def seed(self, seed: int) -> int:
        """This rank's seed derived from the run's `seed`."""
        return seed + RANK_SEED_STRIDE * self.rank


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher setting `WORLD_SIZE`) started this process."""
    return "WORLD_SIZE" in os.environ


def world() -> World:
    """The current process group's world (a single process when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())


def init_distributed(device: torch.device,
                     purpose: str = "training") -> tuple[World, torch.device]:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on the CPU) and return this
    process's world and device (`cuda:LOCAL_RANK` on GPUs). Without `WORLD_SIZE`: a world of
    one and `device` unchanged. `purpose` names the work in rank 0's log line."""
    if not launched_by_torchrun():
        return World(), device
    if not dist.is_available():
        raise DeviceError("WORLD_SIZE is set (a torchrun launch) but this torch build has no "
                          "torch.distributed. Fix: install a torch build with it, or run "
                          "without torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DeviceError(f"LOCAL_RANK {local_rank} but this machine has "
                              f"{torch.cuda.device_count()} GPUs. Fix: torchrun "
                              "--nproc_per_node at most the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return world(), device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    here = world()
    if not here.is_main:  # one process reports; the others speak only of trouble
        logging.getLogger("rcnnlab").setLevel(logging.WARNING)
    else:
        log.info("data-parallel %s: %d processes (%s), this is rank 0 on %s", purpose,
                 here.size, dist.get_backend(), device)
    return here, device


@contextlib.contextmanager
def process_group(device: torch.device, purpose: str) -> Iterator[tuple[World, torch.device]]:
    """`init_distributed` for one piece of work (`purpose`: "prediction", "evaluation"): the
    group it joined is left when the work is done, all ranks together; a group that existed
    before is left as it was."""
    joined = launched_by_torchrun() and not (dist.is_available() and dist.is_initialized())
    here, device = init_distributed(device, purpose)
    ok = False
    try:
        yield here, device
        ok = True
    finally:
        if joined:
            if ok:
                barrier()
            close_distributed()


def env_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun), before or after the
    process group exists."""
    return int(os.environ.get("RANK", 0))


def close_distributed() -> None:
    """Leave the process group (when one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (pickled); `obj` itself in a single process."""
    if not world().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank; `[obj]` in a single process."""
    here = world()
    if not here.distributed:
        return [obj]
    out = [None] * here.size
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj) -> list | None:
    """Every rank's `obj`, in rank order, on rank 0 (None on the others); `[obj]` in a single
    process. Cheaper than `gather_objects` when only rank 0 needs them."""
    here = world()
    if not here.distributed:
        return [obj]
    out = [None] * here.size if here.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def on_main(fn: Callable[[], T]) -> T:
    """`fn()` run by rank 0 alone, its value on every rank; a `UserError` or `OSError` it
    raises is raised on every rank (rather than leaving the others waiting for rank 0)."""
    if not world().distributed:
        return fn()
    outcome: tuple[bool, object] = (True, None)
    if world().is_main:
        try:
            outcome = (True, fn())
        except (UserError, OSError) as exc:  # OSError: a path the file system refused
            outcome = (False, exc)
    ok, value = broadcast_object(outcome)
    if not ok:
        raise value
    return value


def all_reduce_mean(values: list[float]) -> list[float]:
    """The mean over ranks of each of `values`; `values` in a single process."""
    here = world()
    if not here.distributed:
        return values
    # NCCL reduces GPU tensors only, gloo CPU ones
    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else torch.device("cpu"))
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / here.size).tolist()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world().distributed:
        dist.barrier()
