"""Which batch an image belongs to. An image's source record says which batch its current version was read for;
images registered when every image was its own partition have records that say none, and for them the batches made
by the move to batches (`sensors/batch_migration.py`) are written down here, in 256 files by a hash of the image id
(`<results prefix>~batches/migrated/<xx>.json`), so a lookup reads one small file, not every manifest."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping

from ..records import SourceImageRecord
from .object_store import ObjectMissing
from .results_store import BATCHES, ResultsStore

MIGRATED = f"{BATCHES}migrated/"


def _shard(image: str) -> str:
    return hashlib.sha256(image.encode()).hexdigest()[:2]


class BatchLookup:
    def __init__(self, results: ResultsStore):
        self._results = results
        self._shards: dict[str, dict[str, str]] = {}

    def batch_of(self, image: str, record: SourceImageRecord | None) -> str | None:
        if record is not None and record.batch:
            return record.batch
        shard = _shard(image)
        if shard not in self._shards:
            self._shards[shard] = read_shard(self._results, shard)
        return self._shards[shard].get(image)


def read_shard(results: ResultsStore, shard: str) -> dict[str, str]:
    try:
        _, data = results.store.get(f"{results.prefix}{MIGRATED}{shard}.json")
    except ObjectMissing:
        return {}
    return json.loads(data)


def record_migrated(results: ResultsStore, batch_of: Mapping[str, str]) -> None:
    """Add these image -> batch entries (a slice of a migration) to their shards."""
    by_shard: dict[str, dict[str, str]] = defaultdict(dict)
    for image, batch in batch_of.items():
        by_shard[_shard(image)][image] = batch
    for shard, entries in by_shard.items():
        merged = read_shard(results, shard) | entries
        results.store.put(f"{results.prefix}{MIGRATED}{shard}.json", json.dumps(merged).encode(), "application/json")
