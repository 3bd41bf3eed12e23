"""A listing of the bucket that resumes across sensor ticks: each tick lists one slice (at most `keys_per_tick` keys
in key order, from just after where the slice before ended), so no tick reads a whole bucket of a million objects;
a pass over the bucket spans as many ticks as it needs, and its progress is in the cursor and the tick's log.

Deletions are judged per slice: a registered image whose object key falls inside the slice's key range and was not
listed there is gone. An image id that is its object key (relative to the prefix; most are) places itself in a
range; a slugged id (`name~hash`, for keys that are not plain, see `partition_keys.py`) does not, so the slugged
ids each slice listed are written down (`<results prefix>~listing/<pass>/`, nothing for a bucket of plain keys),
and at the end of the pass the slugged ids no slice listed are confirmed gone one by one (their registration names
the object; a HEAD says it is missing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

from pydantic import BaseModel

from .records import StoredObject
from .storage.object_store import ListedSlice, ObjectMissing
from .storage.overlap import each_image
from .storage.results_store import LISTING, ResultsStore


class ListingPass(BaseModel):
    number: int  # passes begun since the cursor was new
    started_at: float
    after: str = ""  # the last key listed and dealt with: the next slice starts just after it
    listed: int = 0  # keys listed so far in this pass
    slices: int = 0
    fresh: bool = False  # begun with a fresh cursor: every slice asks which registered images are materialized

    def progress(self, expected: int | None) -> str:
        out_of = f" of about {expected:,}" if expected else ""
        return f"listing pass {self.number}: {self.listed:,}{out_of} keys listed in {self.slices} slice(s)"


def resume_after(listed: ListedSlice, after: str, waiting: Iterable[str]) -> tuple[str, bool]:
    """Where the next slice starts, and whether the pass is complete. Keys this tick had to leave (still being
    written, or past the tick's upload cap) are listed again by the next slice: it starts just before the first of
    them. A slice that could not move forward at all moves on anyway (those keys wait for the next pass)."""
    keys = [obj.key for obj in listed.objects]
    first_waiting = min(waiting, default=None)
    if first_waiting is None:
        return (keys[-1] if keys else after), not listed.truncated
    before = [key for key in keys if key < first_waiting]
    if before:
        return before[-1], False
    return (keys[-1] if keys else after), not listed.truncated


def in_key_range(registered: Iterable[str], prefix: str, after: str, end: str | None) -> list[str]:
    """The plain image ids whose object key (`prefix` + id) lies in (after, end] (end None: to the end of the
    bucket)."""
    return [image for image in registered
            if "~" not in image and prefix + image > after and (end is None or prefix + image <= end)]


def slugged(ids: Iterable[str]) -> list[str]:
    return sorted(image for image in ids if "~" in image)


class SluggedPresence:
    """The slugged ids each slice of a pass listed, with their object keys: one small file per slice, under
    `~listing/<pass>/`. The last complete pass's files are kept until the next pass ends: they name the object of
    an id the new pass no longer lists."""

    def __init__(self, results: ResultsStore):
        self._results = results
        self._root = f"{results.prefix}{LISTING}"

    def folder(self, listing: ListingPass) -> str:
        return f"{self._root}{listing.number:06d}-{int(listing.started_at)}/"

    def record(self, listing: ListingPass, keys: dict[str, str]) -> None:
        """`keys`: slugged id -> object key, as this slice listed them."""
        if keys:
            self._results.store.put(f"{self.folder(listing)}{listing.slices:06d}.json", json.dumps(keys).encode(),
                                    "application/json")

    def passes(self) -> dict[str, dict[str, str]]:
        """Every pass's notes: folder -> (slugged id -> object key)."""
        store, found = self._results.store, {}
        for obj in store.list(self._root):
            found.setdefault(obj.key.rsplit("/", 1)[0] + "/", {}).update(json.loads(store.get(obj.key)[1]))
        return found

    def forget_all_but(self, listing: ListingPass | None) -> None:
        keep = self.folder(listing) if listing else None
        for obj in list(self._results.store.list(self._root)):
            if keep is None or not obj.key.startswith(keep):
                self._results.store.delete(obj.key)


def confirmed_gone(candidates: dict[str, str | None], object_key_of: Callable[[str], str | None],
                   head: Callable[[str], StoredObject], threads: int = 16) -> list[str]:
    """Of these image ids (-> their object key where known, else `object_key_of` is asked), the ones whose object
    is missing. An id whose object is not known (never listed, not ingested yet) is not judged."""
    def gone(image: str) -> bool:
        key = candidates[image] or object_key_of(image)
        if key is None:
            return False
        try:
            head(key)
        except ObjectMissing:
            return True
        return False

    ids = sorted(candidates)
    return [image for image, is_gone in zip(ids, each_image(gone, list(ids), threads), strict=True) if is_gone]


def new_pass(number: int, fresh: bool) -> ListingPass:
    return ListingPass(number=number, started_at=time.time(), fresh=fresh)
