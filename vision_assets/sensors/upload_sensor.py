"""Registers new uploads in upload batches (a partition of `batches` and a manifest each) and launches one run
per batch."""


import time
from collections.abc import Iterable
from datetime import UTC, datetime

import dagster as dg

from ..assets.deletion import delete_run_config
from ..jobs import delete_images, process_images
from ..keys import SOURCE_IMAGES
from ..partitions import batches, images, partition_key_for
from ..resources import ImageStore, S3ImageStore, UploadPolicy
from ..vision.batches import BatchManifest, batch_key, next_number
from ..vision.chunking import chunked
from ..vision.deletion import safe_to_delete
from ..vision.records import StoredObject
from ..vision.storage.s3_events import EventQueue
from ..vision.upload_tracking import TickPlan, UploadCursor, plan_tick
from .batch_migration import migrate_slice
from .run_keys import run_key

IMAGES_TAG = "vision_assets/images"  # how many images a run's batches hold


def batch_run_key(batch: list[str], versions: dict[str, str]) -> str:
    # The run key names the exact object versions, so a re-evaluated tick never launches the same batch twice
    # while a re-upload (new etag) always gets a new run.
    return run_key("upload-batch", *(f"{key}\0{versions[key]}" for key in batch))


def describe(plan: TickPlan) -> str:
    parts = [f"{len(plan.new_partition_keys)} new", f"{len(plan.uploads) - len(plan.new_partition_keys)} re-uploaded"]
    for reason, count in plan.skipped.items():
        parts.append(f"{count} skipped, {reason.value} (e.g. {', '.join(plan.skipped_examples[reason])})")
    if plan.conflicts:
        parts.append(f"{len(plan.conflicts)} skipped because their partition key is taken: {plan.conflicts[:5]}")
    return ", ".join(parts)


def make_upload_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="upload_sensor",
        jobs=[process_images, delete_images],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Registers every new or re-uploaded image in an upload batch (a partition of `batches`, its "
        "manifest in the results store) and launches one `process_images` run per batch; images whose object is "
        "gone are deleted (`delete_images`). Lists the bucket every tick, or, with an S3 events queue, reads the "
        "queue and lists only to reconcile. Moves an instance that had one partition per image to batches first.",
    )
    def upload_sensor(context: dg.SensorEvaluationContext, image_store: ImageStore, upload_policy: UploadPolicy):
        cursor = UploadCursor.parse(context.cursor)
        moving = migrate_slice(context, image_store, upload_policy, cursor)
        if isinstance(moving, dg.SensorResult):
            return moving
        cursor = moving
        queue = image_store.event_queue() if isinstance(image_store, S3ImageStore) else None
        if queue is None:
            return _listing_tick(context, image_store, upload_policy, cursor)
        if cursor.acknowledge:
            # The previous tick's messages: its cursor was stored, so its partitions and run requests are applied.
            queue.delete(cursor.acknowledge)
            cursor = cursor.model_copy(update={"acknowledge": []})
        now = time.time()
        if cursor.listed_at is None or now - cursor.listed_at >= image_store.reconcile_seconds:
            context.log.info("listing the bucket to reconcile with the upload events (missed or lost events, "
                             "deleted objects)")
            return _listing_tick(context, image_store, upload_policy, cursor.model_copy(update={"listed_at": now}))
        return _event_tick(context, image_store, upload_policy, cursor, queue)

    return upload_sensor


def _listing_tick(context: dg.SensorEvaluationContext, image_store: ImageStore, upload_policy: UploadPolicy,
                  cursor: UploadCursor) -> dg.SensorResult:
    registered = context.instance.get_dynamic_partitions(images.name)  # registration order
    plan = _plan(context, image_store, upload_policy, image_store.objects.list(image_store.prefix), registered, cursor)
    deletions, delete_requests = _deletions(context, registered, plan)
    return _result(context, image_store, upload_policy, plan, plan.cursor, deletions, delete_requests)


def _event_tick(context: dg.SensorEvaluationContext, image_store: ImageStore, upload_policy: UploadPolicy,
                cursor: UploadCursor, queue: EventQueue) -> dg.SensorResult:
    messages = queue.receive(upload_policy.max_uploads_per_tick)
    if not messages:
        return dg.SensorResult(skip_reason="no upload events in the queue", cursor=cursor.dump())
    latest: dict[str, StoredObject] = {}  # per key, the newest version announced
    removed = 0
    for event in (event for message in messages for event in message.events):
        if not event.created:
            removed += 1
        elif event.obj.key not in latest or event.obj.last_modified >= latest[event.obj.key].last_modified:
            latest[event.obj.key] = event.obj
    if unreadable := [m.unreadable for m in messages if m.unreadable]:
        context.log.warning(f"{len(unreadable)} queue message(s) are not S3 event notifications and are dropped: "
                            f"{unreadable[:3]} (is something else sending to this queue?)")
    if removed:
        context.log.info(f"{removed} removal event(s): deletions are confirmed by the next listing of the bucket "
                         f"(every {image_store.reconcile_seconds} s)")
    registered = context.instance.get_dynamic_partitions(images.name)
    plan = _plan(context, image_store, upload_policy, latest.values(), registered, cursor)
    after = plan.cursor.model_copy(update={"acknowledge": [m.receipt for m in messages]})
    return _result(context, image_store, upload_policy, plan, after, [], [])


def _plan(context: dg.SensorEvaluationContext, image_store: ImageStore, upload_policy: UploadPolicy,
          objects: Iterable[StoredObject], registered: list[str], cursor: UploadCursor) -> TickPlan:
    return plan_tick(
        objects,
        set(registered),
        cursor,
        materialized=lambda: _ingested_images(context, image_store),
        upload_filter=image_store.upload_filter,
        partition_key_of=partition_key_for,
        lookback=upload_policy.version_lookback,
        max_uploads=upload_policy.max_uploads_per_tick,
        settled_before=image_store.settled_before(),
    )


def _ingested_images(context: dg.SensorEvaluationContext, image_store: ImageStore) -> set[str]:
    """The images of every batch `source_images` has materialized (asked only when the cursor is fresh)."""
    done = sorted(context.instance.get_materialized_partitions(SOURCE_IMAGES))
    manifests = image_store.results.read_manifests(done)
    return {image for manifest in manifests.values() if manifest for image in manifest.images}


def _result(context: dg.SensorEvaluationContext, image_store: ImageStore, upload_policy: UploadPolicy,
            plan: TickPlan, cursor: UploadCursor, deletions: list, delete_requests: list) -> dg.SensorResult:
    summary = describe(plan)
    if not plan.uploads and not delete_requests:
        return dg.SensorResult(skip_reason=f"nothing to process ({summary})", cursor=cursor.dump())
    if not plan.uploads:
        return dg.SensorResult(dynamic_partitions_requests=deletions, run_requests=delete_requests,
                               cursor=cursor.dump())

    new_keys = plan.new_partition_keys
    uploads = {u.partition_key: u.obj for u in plan.uploads}
    versions = {key: obj.etag for key, obj in uploads.items()}
    now = datetime.now(UTC).replace(microsecond=0)
    first = next_number(now, context.instance.get_dynamic_partitions(batches.name))
    # The manifests are stored before the partitions exist, so no run can start without its own: one file per batch,
    # not per object. A re-upload goes in a new batch like a new image; its older batch's entry is superseded.
    manifests = [
        BatchManifest(batch=batch_key(now, first + number), created_at=now, images=list(group),
                      registrations=[image_store.registration(key, uploads[key]) for key in group])
        for number, group in enumerate(chunked(list(uploads), upload_policy.batch_size))
    ]
    image_store.results.write_manifests(manifests)
    context.log.info(f"{summary}: {len(manifests)} batch(es), one run each")
    requests = [dg.RunRequest(job_name=process_images.name, partition_key=manifest.batch,
                              run_key=batch_run_key(manifest.images, versions),
                              tags={IMAGES_TAG: str(len(manifest.images))}) for manifest in manifests]
    return dg.SensorResult(
        dynamic_partitions_requests=([images.build_add_request(new_keys)] if new_keys else [])
        + [batches.build_add_request([manifest.batch for manifest in manifests])] + deletions,
        run_requests=requests + delete_requests,
        cursor=cursor.dump(),
    )


def _deletions(context: dg.SensorEvaluationContext, registered: list[str], plan: TickPlan):
    """Registered images whose object is no longer in the bucket: their partitions go, and a delete_images run
    removes their points and results."""
    gone = sorted(set(registered) - plan.present)
    if not gone:
        return [], []
    if not safe_to_delete(len(gone), len(registered)):
        context.log.warning(f"{len(gone)} of {len(registered)} images look deleted from the bucket: not deleting "
                            "anything (wrong prefix? partial listing?). Run delete_images to confirm.")
        return [], []
    request = dg.RunRequest(
        job_name=delete_images.name,
        run_key=run_key("delete", *gone),
        run_config=delete_run_config(gone, delete_objects=False),
        tags={"vision_assets/deleted": str(len(gone))},
    )
    context.log.info(f"{len(gone)} image(s) removed from the bucket: deleting {gone[:5]}")
    return [images.build_delete_request(gone)], [request]
