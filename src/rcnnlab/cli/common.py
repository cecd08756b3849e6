"""What every command shares: the consoles, option types, logging, the one-line error for the
user's input (`user_errors`), range checks, multi-process launching and progress bars."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from rcnnlab.errors import ConfigError, UserError
from rcnnlab.evaluation.coco import format_score

console = Console()
err_console = Console(stderr=True)

RunArg = Annotated[Path, typer.Argument(help="Run folder (or checkpoint).")]
ModelArg = Annotated[Path, typer.Argument(
    help="Run folder, checkpoint, or exported model (.onnx, .xml, .torchscript).")]
ImagesOpt = Annotated[Path | None, typer.Option(help="Its image folder.")]
OverridesArg = Annotated[list[str] | None, typer.Argument(
    help="Config overrides as dotted key=value, e.g. train.epochs=3 model.arch=resnet34_fpn",
    show_default=False)]
ConfigOpt = Annotated[str | None, typer.Option(
    "--config", "-c", help="YAML config file, or a built-in recipe (orand, demo, base: see "
    "`rcnnlab configs`); overrides apply on top. Without it, the plan for the data "
    "(rcnnlab plan).")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
NprocOpt = Annotated[int, typer.Option(
    "--nproc-per-node",
    help="Run as N processes on this machine (one per GPU, or CPU processes over gloo), as "
    "torchrun --standalone --nproc_per_node N does.")]
EvalOverridesArg = Annotated[list[str] | None, typer.Argument(
    help="Inference options of this call as eval.key=value, e.g. eval.nms=gaussian "
    "'eval.tta_scales=[1,1.5]' eval.tta_merge=wbf (only eval.* keys)", show_default=False)]


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler: logging.Handler
    if err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, markup=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", handlers=[handler],
                        force=True)


# what to do when the file system refuses a path, by errno
PATH_FIXES = {
    errno.EACCES: "give a path you may write to (e.g. --out in your home folder), or change "
                  "its permissions",
    errno.EPERM: "give a path you may write to, or change its permissions",
    errno.EROFS: "give a path on a writable file system",
    errno.ENOSPC: "free disk space (or give --out on another disk) and run the command again",
    errno.EDQUOT: "free space in your quota and run the command again",
    errno.ENOTDIR: "a part of the path is a file, not a folder: give a folder path",
    errno.EISDIR: "the path is a folder: give a file path",
    errno.EEXIST: "the path exists and is not a folder: give another one",
    errno.EIO: "the disk reported an error while writing: check the disk and its free space, "
               "then run the command again",
}


def one_line(message: str) -> None:
    """Print an error as one line (a YAML parser's message spans several), as text, not
    markup: "[x, y, w, h]" must print as written."""
    err_console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}",
                      highlight=False, soft_wrap=True)


def in_range(option: str, value: float | None, low: float, high: float | None = None) -> None:
    """Refuse an option value outside low..high as one line naming the option (click's own
    range check would print its usage box)."""
    if value is not None and not (low <= value and (high is None or value <= high)):
        allowed = f"{low:g} or more" if high is None else f"{low:g} to {high:g}"
        raise ConfigError(f"{option} {value:g}: give {allowed}")


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def in_processes(nproc: int) -> bool:
    """With `--nproc-per-node N` > 1: run this very command in N processes and wait for them
    (True); the caller then has nothing left to do."""
    from rcnnlab.runs.distributed import launched_by_torchrun
    from rcnnlab.runs.launch import launch_local

    in_range("--nproc-per-node", nproc, 1)
    if nproc == 1:
        return False
    if launched_by_torchrun():
        raise ConfigError("--nproc-per-node under torchrun: torchrun already started the "
                          "processes. Fix: give either torchrun --nproc_per_node or "
                          "--nproc-per-node, not both")
    launch_local(nproc, without_nproc(sys.argv[1:]))
    return True


def without_nproc(argv: list[str]) -> list[str]:
    """The command line less its --nproc-per-node option (each process is one of N)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            kept.append(arg)
    return kept


def user_errors(func):
    """Turn the user's input errors into one clear line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        setup_logging()
        from rcnnlab.progress import PROGRESS

        token = PROGRESS.set(phase_bar if err_console.is_terminal else None)
        try:
            return func(*args, **kwargs)
        except UserError as exc:  # anything else is a bug: its traceback is shown
            one_line(str(exc))
            raise typer.Exit(2) from None
        except RuntimeError as exc:  # another process of a distributed run died
            from rcnnlab.runs.launch import launched_here, peer_died

            if not peer_died(exc):
                raise
            if not launched_here():  # else the launcher reports, once for all processes
                one_line(f"another process of this run died ({first_line(exc)}). Fix: "
                          "find why in its output, then run the same command again (with "
                          "--resume for train and predict --out)")
            raise typer.Exit(1) from None
        except OSError as exc:  # the file system said no to a path: the user's to fix
            if exc.errno not in PATH_FIXES or exc.filename is None:
                raise
            one_line(f"{exc.filename}: {exc.strerror}. Fix: {PATH_FIXES[exc.errno]}")
            raise typer.Exit(2) from None
        finally:
            PROGRESS.reset(token)

    return wrapper


def print_eval(result) -> None:
    m = result.metrics
    table = Table(title=f"{result.split} split: {result.n_images} images")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in m.stats().items():
        table.add_row(key, format_score(value))
    if result.seq_acc is not None:
        table.add_row(f"sequence accuracy @ {result.threshold:.2f}", format_score(result.seq_acc))
    console.print(table)


@contextlib.contextmanager
def phase_bar(description: str, total: int):
    """A detection pass's bar (validation, tune, evaluate, report, diagnose) on a terminal;
    when another live display holds the terminal, the pass runs without one."""
    with progress_bar(description) as (advance, set_total):
        set_total(total)
        yield advance


@contextlib.contextmanager
def progress_bar(description: str):
    """A progress bar with ETA on a terminal (silent elsewhere): yields (advance(n),
    set_total(n))."""
    from rich.errors import LiveError

    from rcnnlab.engine.progress import eta_progress

    bar = eta_progress(err_console, transient=True, disable=not err_console.is_terminal)
    try:
        bar.start()
    except LiveError:  # another bar is showing (training's): this phase runs without one
        yield (lambda n=1: None), (lambda n: None)
        return
    try:
        task = bar.add_task(description, total=None)
        yield (lambda n=1: bar.advance(task, n)), (lambda n: bar.update(task, total=n))
    finally:
        bar.stop()


