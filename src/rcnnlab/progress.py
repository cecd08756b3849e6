"""How a long phase shows its progress, from any layer without importing the command line.

`PROGRESS` holds a factory (description, total) -> a context manager yielding advance(n). The
command line sets a progress bar for the command's duration when it writes to a terminal; the
Python API and log files stay quiet (None).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import TypeVar

ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]
PROGRESS: ContextVar[ProgressFactory | None] = ContextVar("rcnnlab_progress", default=None)

T = TypeVar("T")


@contextlib.contextmanager
def progress_of(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """advance(n) for a phase of `total` steps: the bar `PROGRESS` makes, or nothing."""
    factory = PROGRESS.get()
    if factory is None:
        yield lambda n=1: None
        return
    with factory(description, total) as advance:
        yield advance


def tracked(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """`items`, advancing a `progress_of` bar by one per item (`total`: len(items) when
    omitted)."""
    count = total if total is not None else len(items) if isinstance(items, Sized) else 0
    with progress_of(description, count) as advance:
        for item in items:
            yield item
            advance(1)
