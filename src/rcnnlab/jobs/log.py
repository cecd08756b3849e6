"""A job's log of finished images, `predictions.jsonl`: one JSON object per image, appended in
image order as images finish, and the job's index of what is done.

A line is ``{"index", "image_id", "file", "number", "detections"}``: the image's position in
the source, its id and file, the number read (null when the classes are no digits) and its
detections as COCO results; or ``{"index", "image_id", "file", "error"}`` for an image that
could not be read. A kill can cut the last line short; `recover` drops it, so that image is
detected again and no image is logged twice.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from rcnnlab.errors import RunError

LOG_NAME = "predictions.jsonl"
# fsync the log at most this often: a killed process loses nothing the kernel holds, a machine
# that goes down loses at most this many seconds of work (detected again on resume)
SYNC_SECONDS = 5.0
_PREFIX = b'{"index": '


class ResultsLog:
    """`predictions.jsonl` in a job's output folder."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOG_NAME
        self._file: BinaryIO | None = None
        self._synced = time.monotonic()

    def recover(self) -> set[int]:
        """The indices of the images logged; a last line a kill cut short is cut off the
        file."""
        if not self.path.is_file():
            return set()
        done: set[int] = set()
        whole = 0  # bytes of complete lines
        with self.path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                if not line.endswith(b"\n"):
                    break
                done.add(self._index(line, number))
                whole += len(line)
        if whole < self.path.stat().st_size:
            os.truncate(self.path, whole)
        return done

    def count(self) -> int:
        """The images logged (the file is left as it is)."""
        if not self.path.is_file():
            return 0
        with self.path.open("rb") as lines:
            return sum(1 for line in lines if line.endswith(b"\n"))

    def _index(self, line: bytes, number: int) -> int:
        if line.startswith(_PREFIX):  # as rcnnlab writes it: no need to parse the detections
            head = line[len(_PREFIX):line.find(b",")]
            if head.isdigit():
                return int(head)
        try:
            index = json.loads(line)["index"]
            if isinstance(index, int):
                return index
        except (ValueError, KeyError, TypeError):
            pass
        raise RunError(f"{self.path}, line {number}: not a line rcnnlab predict writes. Fix: "
                       "move the file away to predict every image again, or give another --out")

    def start_over(self) -> None:
        """Forget what an earlier job logged here."""
        self.path.unlink(missing_ok=True)

    def append(self, records: list[dict]) -> None:
        """Log finished images (one write, flushed to the kernel)."""
        if not records:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        self._file.write("".join(json.dumps(r) + "\n" for r in records).encode())
        self._file.flush()
        if time.monotonic() - self._synced > SYNC_SECONDS:
            os.fsync(self._file.fileno())
            self._synced = time.monotonic()

    def close(self) -> None:
        """Sync and close the file."""
        if self._file is not None:
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def ascending(self) -> bool:
        """Whether the log lists each image once, in image order (as rcnnlab writes it)."""
        last = -1
        if self.path.is_file():
            with self.path.open("rb") as lines:
                for number, line in enumerate(lines, 1):
                    index = self._index(line, number)
                    if index <= last:
                        return False
                    last = index
        return True

    def records(self) -> Iterator[dict]:
        """The logged images in log order (which is image order)."""
        if not self.path.is_file():
            return
        with self.path.open("rb") as lines:
            for line in lines:
                yield json.loads(line)
