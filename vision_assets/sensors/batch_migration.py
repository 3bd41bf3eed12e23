"""The move from one partition per image (the layout before upload batches) to batches, done by the upload sensor
on its first ticks, a slice per tick, without re-processing anything:

- the images registered before (the first keys of `images`, in registration order) are grouped into batches of
  `VISION_ASSETS_BATCH_SIZE`, each with a manifest (`migrated`: its images keep their own `~registration.json`);
- each batch is materialized, without a run, for every stage all its images had reached, so nothing shows as
  missing and a backfill of missing batches re-runs only what never finished;
- each batch's checks are judged from the images' last per-image results (which Dagster still holds), the index
  ledger is written, and the image -> batch lookup (`vision/storage/batch_lookup.py`) gains the slice.

New uploads wait until it is done; the tick's log says how far it is."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import dagster as dg

from ..assets.batch_checks import latest_materializations
from ..dagster_internals import CheckRecordStatus
from ..keys import PIPELINE_STAGES, QDRANT_INDEX
from ..partitions import batches, images
from ..resources import ImageStore, UploadPolicy
from ..vision.batches import BatchIndexed, BatchManifest, batch_key
from ..vision.chunking import STORAGE_QUERY_KEYS, chunked
from ..vision.storage.batch_lookup import record_migrated
from ..vision.upload_tracking import Migration, UploadCursor

BATCHES_PER_TICK = 100  # about 1,000 events stored per tick: well inside Dagster's 60 s sensor timeout
# The per-image checks of the old layout -> the per-batch checks judged from them.
OLD_CHECKS = {
    ("source_images", "image_valid"): "images_valid",
    ("embeddings", "embedding_valid"): "embeddings_valid",
    ("specialist_labels", "labels_confident"): "labels_confident",
    ("specialist_labels", "committee_agrees"): "committee_agrees",
    ("qdrant_index", "indexed"): "index_consistent",
}


def migrate_slice(context: dg.SensorEvaluationContext, image_store: ImageStore, upload_policy: UploadPolicy,
                  cursor: UploadCursor) -> dg.SensorResult | UploadCursor:
    """A tick's share of the move (a SensorResult), or the cursor to carry on with when there is nothing (left) to
    move."""
    instance = context.instance
    migration = cursor.migration
    if migration is None:
        registered = instance.get_dynamic_partitions(images.name)
        legacy = len(registered) if registered and not instance.get_dynamic_partitions(batches.name) else 0
        migration = Migration(started_at=datetime.now(UTC).replace(microsecond=0), legacy_images=legacy)
        if legacy:
            context.log.warning(
                f"this instance has {legacy:,} images registered one partition each (before upload batches): moving "
                f"them into batches of {upload_policy.batch_size} without re-processing anything, "
                f"{BATCHES_PER_TICK * upload_policy.batch_size:,} images per tick; new uploads wait until it is done")
    if migration.done:
        return cursor.model_copy(update={"migration": migration})
    registered = instance.get_dynamic_partitions(images.name)[:migration.legacy_images]
    todo = registered[migration.moved:migration.moved + BATCHES_PER_TICK * upload_policy.batch_size]
    manifests = [
        BatchManifest(batch=batch_key(migration.started_at, migration.batches + number),
                      created_at=migration.started_at, images=list(group), migrated=True)
        for number, group in enumerate(chunked(todo, upload_policy.batch_size))
    ]
    results = image_store.results
    results.write_manifests(manifests)
    record_migrated(results, {image: m.batch for m in manifests for image in m.images})
    instance.add_dynamic_partitions(batches.name, [m.batch for m in manifests])
    materialized = _report_materializations(instance, manifests)
    passed_index = _report_checks(instance, manifests, materialized)
    for manifest in manifests:
        results.write_batch_indexed(BatchIndexed(batch=manifest.batch,
                                                 indexed=[i for i in manifest.images if i in passed_index]))
    migration = migration.model_copy(update={"moved": migration.moved + len(todo),
                                             "batches": migration.batches + len(manifests)})
    said = (f"moved {migration.moved:,} of {migration.legacy_images:,} images registered one partition each into "
            f"{migration.batches:,} batches ({len(manifests)} this tick, nothing re-processed)")
    said += "; done: new uploads are registered from the next tick" if migration.done else \
        "; new uploads wait until it is done"
    context.log.info(said)
    return dg.SensorResult(skip_reason=said, cursor=cursor.model_copy(update={"migration": migration}).dump())


def _latest_by_image(instance: dg.DagsterInstance, stage: dg.AssetKey, keys: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for chunk in chunked(list(keys), STORAGE_QUERY_KEYS):
        found |= instance.event_log_storage.get_latest_storage_id_by_partition(
            stage, dg.DagsterEventType.ASSET_MATERIALIZATION, set(chunk))
    return found


def _report_materializations(instance: dg.DagsterInstance,
                             manifests: list[BatchManifest]) -> dict[tuple[dg.AssetKey, str], bool]:
    """Each stage materialized for each batch whose every image it had materialized."""
    everything = [image for manifest in manifests for image in manifest.images]
    materialized = {}
    for stage in PIPELINE_STAGES:
        reached = _latest_by_image(instance, stage, everything)
        for manifest in manifests:
            done = all(image in reached for image in manifest.images)
            materialized[(stage, manifest.batch)] = done
            if done:
                instance.report_runless_asset_event(dg.AssetMaterialization(
                    asset_key=stage, partition=manifest.batch,
                    description="moved from one partition per image to upload batches; not re-processed",
                    metadata={"images": len(manifest.images), "migrated": True}))
    return materialized


def _report_checks(instance: dg.DagsterInstance, manifests: list[BatchManifest],
                   materialized: dict[tuple[dg.AssetKey, str], bool]) -> set[str]:
    """Each batch's checks judged from its images' last per-image results; returns the images whose `indexed`
    passed (the index ledger)."""
    everything = [image for manifest in manifests for image in manifest.images]
    passed_index: set[str] = set()
    for (asset, old_name), new_name in OLD_CHECKS.items():
        stage = dg.AssetKey(asset)
        statuses: dict[str, CheckRecordStatus] = {}
        for chunk in chunked(everything, STORAGE_QUERY_KEYS):
            for info in instance.event_log_storage.get_asset_check_partition_info(
                    [dg.AssetCheckKey(stage, old_name)], partition_keys=list(chunk)):
                statuses[info.partition_key] = info.latest_execution_status
        if stage == QDRANT_INDEX:
            passed_index |= {i for i, s in statuses.items() if s == CheckRecordStatus.SUCCEEDED}
        done = [m for m in manifests if materialized[(stage, m.batch)]]
        targets = latest_materializations(instance, stage, [m.batch for m in done])
        for manifest in done:
            failed = [i for i in manifest.images if statuses.get(i) == CheckRecordStatus.FAILED]
            judged = [i for i in manifest.images if statuses.get(i) in (
                CheckRecordStatus.FAILED, CheckRecordStatus.SUCCEEDED)]
            rows = [f"| `{image}` | failed before the move to batches |" for image in failed[:200]]
            instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                asset_key=stage, check_name=new_name, partition=manifest.batch, passed=not failed,
                target_materialization_data=targets.get(manifest.batch),
                severity=dg.AssetCheckSeverity.WARN if asset == "specialist_labels" else dg.AssetCheckSeverity.ERROR,
                description=f"{manifest.batch}: {len(failed)} of {len(judged)} images did not pass (per-image results "
                            "from before the move to batches)" if failed else
                            f"{manifest.batch}: all {len(judged)} judged images passed (before the move to batches)",
                metadata={"batch": manifest.batch, "images": len(manifest.images), "failed_count": len(failed),
                          "passed_count": len(judged) - len(failed), "migrated": True,
                          "failed": dg.MetadataValue.md("\n".join(["| image | why |", "|---|---|", *rows]))}))
    return passed_index

