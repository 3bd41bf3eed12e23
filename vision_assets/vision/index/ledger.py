"""What the pipeline says it indexed, per batch: each batch's latest `qdrant_index` writes the images it left
indexed (`~batches/<batch>.indexed.json`), so the audit reads one small file per batch, not a record per image nor a
check result per image."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ..storage.overlap import each_image
from ..storage.results_store import ResultsStore

RUN_AUDIT_SAMPLE = 1000  # images a run looks up in the index besides its own


@dataclass(frozen=True)
class IndexLedger:
    batches: list[str]  # every batch, in registration order
    indexed_by_batch: dict[str, list[str]]  # batch -> the images its latest index run left indexed

    @property
    def indexed(self) -> list[str]:
        return [image for batch in self.batches for image in self.indexed_by_batch.get(batch, [])]

    def batches_of(self, images: Collection[str]) -> list[str]:
        wanted = set(images)
        return [batch for batch in self.batches if wanted.intersection(self.indexed_by_batch.get(batch, []))]


def index_ledger(results: ResultsStore, batches: Sequence[str], threads: int = 16) -> IndexLedger:
    records = dict(zip(batches, each_image(results.read_batch_indexed, list(batches), threads), strict=True))
    return IndexLedger(list(batches), {batch: record.indexed for batch, record in records.items() if record})


def sampled_indexed(results: ResultsStore, batches: Sequence[str], exclude: Collection[str], seed: str,
                    size: int = RUN_AUDIT_SAMPLE) -> tuple[list[str], int | None]:
    """For a run's `index_complete`: the images indexed by batches outside `exclude`, read from randomly chosen
    batches until `size` images are in hand (so a run's audit costs the same with a thousand images or a million);
    and, when that was a sample, how many batches it was drawn from. A wiped or replaced index is caught by any
    sample; a loss of a few points is left to the sensor's full audit."""
    others = [batch for batch in batches if batch not in set(exclude)]
    order = random.Random(seed).sample(others, len(others))
    indexed: list[str] = []
    read = 0
    for batch in order:
        if len(indexed) >= size:
            break
        record = results.read_batch_indexed(batch)
        read += 1
        indexed += record.indexed if record else []
    return indexed[:size], (len(others) if read < len(others) else None)
