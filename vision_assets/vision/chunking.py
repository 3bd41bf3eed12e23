"""Cutting work into pieces: one helper, and the piece sizes that are limits of the systems we talk to (the sizes
that are tuning choices live with the code they tune, or in the settings)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

STORAGE_QUERY_KEYS = 500  # keys bound in one query of Dagster's storage: well under SQLite's bound on parameters
POINT_LOOKUP = 1000  # point ids per Qdrant retrieve call


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`items` in order, `size` at a time (the last piece shorter); a size under 1 counts as 1."""
    size = max(1, size)
    for start in range(0, len(items), size):
        yield items[start:start + size]
