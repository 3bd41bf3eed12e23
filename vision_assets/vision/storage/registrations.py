"""Where a run finds the object behind each partition: the registrations the upload sensor writes.

The sensor writes one file per run it launches (`<results prefix>~registrations/<batch>.json`, every registration
of that run), not one file per object: ten thousand new objects cost forty PUTs instead of ten thousand, which is
what lets one tick register them in seconds. The run carries its file's name in a tag. Ingest copies each image's
registration into the image's own folder (`~registration.json`), where deletion and later runs find it with one
read. A run without the tag (an image materialized from the UI before the sensor's run ingested it) looks through
the batch files, newest first, each read at most once per run.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timezone

from ..records import RegisteredImage
from .results_store import ResultsStore

REGISTRATIONS_TAG = "vision_assets/registrations"


def batch_name(run_key: str, now: datetime | None = None) -> str:
    """Sortable by time (newest-first search relies on it), unique per run key."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%S%fZ}-{hashlib.sha256(run_key.encode()).hexdigest()[:12]}"


class Registrations:
    """One run's view of the registrations; thread-safe (ingest looks images up from a thread pool)."""

    def __init__(self, results: ResultsStore, batch: str | None = None):
        self._results = results
        self._tagged = {r.partition_key: r for r in results.read_registration_batch(batch)} if batch else {}
        self._lock = threading.Lock()
        self._unsearched: list[str] | None = None  # batch files not read yet, newest first; listed on first need
        self._searched: dict[str, RegisteredImage] = {}

    def find(self, partition_key: str) -> RegisteredImage | None:
        registration = self._tagged.get(partition_key) or self._results.read_registration(partition_key)
        return registration or self._search(partition_key)

    def _search(self, partition_key: str) -> RegisteredImage | None:
        with self._lock:
            if self._unsearched is None:
                self._unsearched = self._results.registration_batch_names()
            while partition_key not in self._searched and self._unsearched:
                for registration in self._results.read_registration_batch(self._unsearched.pop(0)):
                    self._searched.setdefault(registration.partition_key, registration)  # newest wins
            return self._searched.get(partition_key)
