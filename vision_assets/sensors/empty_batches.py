"""Batch partitions that will never run, found and removed: those an earlier version left behind when the daemon
died between adding a tick's partitions and storing its cursor (the tick, evaluated again, registered the same
images in new batches), or that lost their manifest. They showed as Missing in the UI for ever. Now a tick evaluated
again makes the same keys (vision/storage/tick_ledger.py), so this only cleans up what is already there.

A batch is empty when it was never materialized, no run ever took it, it is more than an hour old, and either it has
no manifest or every image of it has been read since for a newer batch (its source record says so). The upload
sensor looks every ten minutes, at most `PER_SWEEP` such batches at a time."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from itertools import islice

import dagster as dg

from ..keys import SOURCE_IMAGES
from ..partitions import batches
from ..resources import ImageStore
from ..vision.batches import batch_order, superseded_by
from ..vision.storage.overlap import each_image

SWEEP_EVERY_SECONDS = 600
OLDER_THAN_SECONDS = 3600
PER_SWEEP = 100


def sweep_due(swept_at: float | None, now: float) -> bool:
    return swept_at is None or now - swept_at >= SWEEP_EVERY_SECONDS


def empty_batches(instance: dg.DagsterInstance, image_store: ImageStore, now: float) -> dict[str, str]:
    """Batch -> why it will never run."""
    done = set(instance.get_materialized_partitions(SOURCE_IMAGES))
    old = (batch for batch in instance.get_dynamic_partitions(batches.name)
           if batch not in done and _registered_at(batch) < now - OLDER_THAN_SECONDS)
    # A run query each, for at most PER_SWEEP of them (batches that failed have runs: they are not ours to remove).
    candidates = list(islice((batch for batch in old if not instance.get_run_records(
        dg.RunsFilter(tags={"dagster/partition": batch}), limit=1)), PER_SWEEP))
    found: dict[str, str] = {}
    results = image_store.results
    for batch, manifest in results.read_manifests(candidates).items():
        if manifest is None:
            found[batch] = "it has no manifest"
            continue
        records = each_image(results.read_source_record, list(manifest.images))
        if records and all(record is not None and superseded_by(record.batch, batch) for record in records):
            found[batch] = f"its {len(records)} image(s) were read since for newer batches"
    return found


def _registered_at(batch: str) -> float:
    moment, _ = batch_order(batch)
    if not moment:
        return time.time()  # not one of ours: never old enough to touch
    return datetime.strptime(moment, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
