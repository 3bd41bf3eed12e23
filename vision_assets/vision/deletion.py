"""Forgetting an image: its points in both collections, its per-image results, and (optionally) the object."""

from __future__ import annotations

from dataclasses import dataclass

from .index.vector_index import VectorIndex
from .storage.object_store import ObjectStore
from .storage.registrations import Registrations
from .storage.results_store import REGISTRATION, ResultsStore


@dataclass
class Deleted:
    partition_key: str
    result_files: int
    object_deleted: bool


def result_keys(results: ResultsStore, partition_key: str) -> list[str]:
    """This image's files only: `a/~x` belongs to `a`, `a/b/~x` to `a/b`."""
    folder = f"{results.prefix}{partition_key}/"
    return [
        obj.key for obj in results.store.list(folder)
        if obj.key[len(folder):].startswith("~") and "/" not in obj.key[len(folder):]
    ]


def delete_image(
    partition_key: str, results: ResultsStore, index: VectorIndex, images: ObjectStore, delete_object: bool,
    registrations: Registrations | None = None,
) -> Deleted:
    registration = (registrations or Registrations(results)).find(partition_key)
    index.delete_image(partition_key)
    object_deleted = False
    if delete_object and registration is not None:
        images.delete(registration.object_key)
        object_deleted = True
    files = result_keys(results, partition_key)
    # The registration goes last (False sorts first): until then a retried deletion still knows the object.
    for key in sorted(files, key=lambda k: k.endswith(REGISTRATION)):
        results.store.delete(key)
    return Deleted(partition_key, len(files), object_deleted)


def safe_to_delete(gone: int, registered: int, max_fraction: float = 0.1, always_allowed: int = 100) -> bool:
    """A tick that finds most images gone is more likely a wrong prefix or an unreachable listing than a user
    deleting them: such a tick deletes nothing and says so."""
    return gone <= max(always_allowed, int(registered * max_fraction))
