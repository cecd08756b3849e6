"""What the category list of a dataset says about it: whether its classes are digits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_DIGITS = frozenset("0123456789")


def digit_names(categories: Sequence[Mapping[str, Any]]) -> dict[int, str] | None:
    """Map category id -> digit string from the category names ("7" -> "7").

    Returns None when ``categories`` is empty or any name is not a single digit 0-9 (surrounding
    whitespace ignored): the dataset is then not a digit dataset and has no number to read.
    """
    names = {int(cat["id"]): str(cat.get("name", "")).strip() for cat in categories}
    if not names or not all(name in _DIGITS for name in names.values()):
        return None
    return names
