"""`--nproc-per-node N`: start N local processes of one rcnnlab command, as `torchrun
--standalone --nproc_per_node N -m rcnnlab ...` does (torch's elastic launcher: one machine, a
rendezvous on a free local port, no restarts), but report the death of a process as one line.

When a process dies (killed, out of memory, a crash), the launcher stops the others, and the
survivors, which find a dead peer in their next collective, leave quietly: the launcher alone
speaks (`ProcessDied`). Under a plain `torchrun` the survivors say it themselves
(`peer_died`), and torchrun then prints its own report.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid

from rcnnlab.errors import UserError

# Set in the processes `launch_local` starts: their launcher reports a dead peer, they do not.
LAUNCHED = "RCNNLAB_LAUNCHED"

# What gloo, NCCL and the c10d store say when the process at the other end of a collective is
# gone (a RuntimeError, or torch.distributed.DistError in newer versions).
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
              "remote worker crashing", "NCCL communicator was aborted")


class ProcessDied(UserError, RuntimeError):
    """A process of a multi-process run died; the message says which and how to go on."""


def launched_here() -> bool:
    """Whether `launch_local` started this process."""
    return os.environ.get(LAUNCHED) == "1"


def peer_died(exc: BaseException) -> bool:
    """Whether `exc` is a collective failing because another process of the run is gone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch.distributed as dist

    if isinstance(exc, dist.DistNetworkError):
        return True
    return isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in _PEER_GONE)


def launch_local(nproc: int, argv: list[str]) -> None:
    """Run `python -m rcnnlab ARGV` in `nproc` processes on this machine and wait for them.

    Raises `ProcessDied` naming the first process that failed and how (a signal or an exit
    code), after the launcher stopped the others. A process that ended with exit code 2 has
    printed its own one-line error: that is passed on as `SystemExit(2)`.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The launcher's own log (which process it signals, which failed) would repeat our line.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                          run_id=str(uuid.uuid4()), rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    os.environ[LAUNCHED] = "1"
    # As torchrun, keep N processes from each starting a thread per core; here they share them.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    try:
        elastic_launch(config, sys.executable)("-m", "rcnnlab", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode == 2:
            raise SystemExit(2) from None
        raise ProcessDied(f"process {rank} of {nproc} {_how(failure.exitcode)}, so the others "
                          "were stopped") from None
    finally:
        os.environ.pop(LAUNCHED, None)


def _how(exitcode: int) -> str:
    """'was killed (SIGKILL)' for a negative exit code, 'exited with code N' otherwise."""
    if exitcode < 0:
        try:
            return f"was killed ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"was killed (signal {-exitcode})"
    return f"exited with code {exitcode}"
