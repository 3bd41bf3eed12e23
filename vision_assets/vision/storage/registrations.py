"""Where a run finds the object behind each image: its batch's manifest (the upload sensor writes one per batch,
not one file per object: ten thousand new objects cost forty PUTs instead of ten thousand), or, for an image whose
batch was made from an older instance (`BatchManifest.migrated`), the image's own copy (`~registration.json`),
which ingest wrote for every image it read before batches held the registrations (it writes none now).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..batches import BatchManifest
from ..records import RegisteredImage
from .results_store import ResultsStore


class Registrations:
    """One run's view of the registrations (read-only, so safe from ingest's thread pool)."""

    def __init__(self, results: ResultsStore, manifests: Iterable[BatchManifest] = ()):
        self._results = results
        self._listed = {r.partition_key: r for manifest in manifests for r in manifest.registrations}

    def find(self, image_id: str) -> RegisteredImage | None:
        return self._listed.get(image_id) or self._results.read_registration(image_id)
