"""The `images` registry (every image id ever registered: Dagster dynamic partitions, one key per image) as the
upload sensor asks it: which of these ids are registered, which ids lie in a listing slice's key range, which are
slugged. Asked of the database through our event storages (event_storage/partition_lists.py), each costs what is
asked, whatever the catalogue's size: reading the whole registry on a process's first tick took 4 s at a million
images, and would take 40 s at ten million, most of Dagster's 60 s sensor timeout. With another event storage
(Dagster's own classes), the registry is read whole once per tick, as before."""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

from ..event_storage.partition_lists import CachedPartitionLists
from ..partitions import images, slugged_images
from ..vision.listing_pass import in_key_range, slugged


class ImageRegistry:
    """`slugged_kept`: the slugged ids are kept in `slugged_images` as they are registered (the upload cursor says
    since when); until then they are found by a scan of the registry, once."""

    def __init__(self, instance: dg.DagsterInstance, slugged_kept: bool = True):
        self._instance, self.slugged_kept = instance, slugged_kept
        storage = instance.event_log_storage
        self._storage = storage if isinstance(storage, CachedPartitionLists) else None
        self._whole: list[str] | None = None

    def _all(self) -> list[str]:
        if self._whole is None:
            self._whole = self._instance.get_dynamic_partitions(images.name)
        return self._whole

    def among(self, ids: Iterable[str]) -> set[str]:
        """Which of these ids are registered."""
        wanted = sorted(set(ids))
        if self._storage is None:
            return set(self._all()) & set(wanted)
        return self._storage.dynamic_partitions_among(images.name, wanted)

    def in_key_range(self, prefix: str, after: str, end: str | None) -> list[str]:
        """The plain ids whose object key (`prefix` + id) lies in (after, end]."""
        if self._storage is None:
            return in_key_range(self._all(), prefix, after, end)
        # A range of ids that holds every answer (the key range, less the prefix), then the exact rule.
        low = after[len(prefix):] if after.startswith(prefix) else ""
        high = end[len(prefix):] if end is not None and end.startswith(prefix) else None
        return in_key_range(self._storage.dynamic_partitions_between(images.name, low, high), prefix, after, end)

    def slugged(self) -> list[str]:
        """The ids that are not their object's key (they carry `~` and a hash)."""
        if self._storage is None:
            return slugged(self._all())
        if self.slugged_kept:
            return sorted(self._instance.get_dynamic_partitions(slugged_images.name))
        return slugged(self._storage.dynamic_partitions_containing(images.name, "~"))
