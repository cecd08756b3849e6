"""Safe writes: every file rcnnlab writes goes through `replacing`, so that a kill, a full disk
or a folder that says no leaves the previous version of the file (or none), never half a file
and never a temporary one.

    with replacing(path) as tmp:            # writers that take a path (savefig, ONNX, PIL)
        fig.savefig(tmp, format="png")
    with atomic_writer(path) as fh:         # text (or bytes, mode="wb") written piece by piece
        fh.write(...)
    write_atomic(path, text)                # the whole text at once

The temporary file is `path` + ".tmp" beside it (the same file system, so the rename is
atomic); it is fsync'd before it replaces `path`. A failed write removes it and is raised as an
`OSError` that names `path` (a write error carries no file name of its own, and torch's writers
report a full disk as a RuntimeError), so the CLI can say which file and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# Under this much free space a failed write is taken for a full disk.
FULL_DISK_BYTES = 64 * 2**20
# What torch's zip writer (torch.save) raises when a write fails, as a RuntimeError: "file
# write failed", or on a full disk "[enforce fail at inline_container.cc:672] . unexpected pos".
_TORCH_WRITER = ("PytorchStreamWriter", "inline_container", "file write failed")


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; at a clean exit it is synced and replaces
    `path` in one rename, on an error it is removed and the error names `path`."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        named = _naming(exc, path)  # before the unlink: the free space with the file written
        tmp.unlink(missing_ok=True)
        if named is None:
            raise
        raise named from exc


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w", *,
                  errors: str = "strict") -> Iterator[IO]:
    """A file that replaces `path` when the block ends without an error: text (UTF-8,
    newlines as written) with mode "w", bytes with mode "wb"."""
    with replacing(path) as tmp:
        if "b" in mode:
            with tmp.open(mode) as fh:
                yield fh
        else:
            with tmp.open(mode, newline="", encoding="utf-8", errors=errors) as fh:
                yield fh


def write_atomic(path: str | Path, text: str | bytes, *, errors: str = "strict") -> Path:
    """Write `text` (UTF-8) or bytes to `path` through `replacing`.

    `errors="surrogateescape"` writes file names the file system gave as undecodable bytes
    back as those bytes, instead of failing.
    """
    binary = isinstance(text, bytes)
    with atomic_writer(path, "wb" if binary else "w", errors=errors) as fh:
        fh.write(text)
    return Path(path)


def _naming(exc: BaseException, path: Path) -> OSError | None:
    """`exc` as an OSError that names `path`, or None where it is no failed write."""
    if isinstance(exc, OSError):
        if exc.filename is not None or exc.errno is None:
            return None
        return OSError(exc.errno, exc.strerror or str(exc), str(path))
    if isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in _TORCH_WRITER):
        try:
            free = shutil.disk_usage(path.parent).free
        except OSError:
            free = 0
        if free < FULL_DISK_BYTES:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return OSError(errno.EIO, f"the write failed ({exc})", str(path))
    return None
