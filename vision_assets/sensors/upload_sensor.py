"""Registers new uploads as partitions and launches one run per batch of them."""


import hashlib
import time
from collections.abc import Iterable

import dagster as dg

from ..checks.validation import SOURCE_IMAGES
from ..assets.deletion import delete_images, delete_run_config
from ..jobs import process_images
from ..partitions import images, partition_key_for
from ..resources import ImageStore, S3ImageStore, UploadPolicy
from ..vision.deletion import safe_to_delete
from ..vision.records import StoredObject
from ..vision.storage.s3_events import EventQueue
from ..vision.storage.registrations import REGISTRATIONS_TAG, batch_name
from ..vision.upload_tracking import TickPlan, UploadCursor, contiguous_batches, plan_tick

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def batch_run_key(batch: list[str], versions: dict[str, str]) -> str:
    # The run key names the exact object versions, so a re-evaluated tick never launches the same batch twice
    # while a re-upload (new etag) always gets a new run.
    identity = "\n".join(f"{key}\0{versions[key]}" for key in batch)
    return f"upload-batch-{hashlib.sha256(identity.encode()).hexdigest()[:20]}"


def batch_run_request(batch: list[str], run_key: str, registrations: str) -> dg.RunRequest:
    return dg.RunRequest(
        job_name=process_images.name,
        run_key=run_key,
        tags={RANGE_START: batch[0], RANGE_END: batch[-1], "vision_assets/images": str(len(batch)),
              REGISTRATIONS_TAG: registrations},
    )


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
        description="Registers every new or re-uploaded image as a partition of `images` and launches one "
        "`process_images` run per batch; images whose object is gone are deleted (`delete_images`). Lists the "
        "bucket every tick, or, with an S3 events queue, reads the queue and lists only to reconcile.",
    )
    def upload_sensor(context: dg.SensorEvaluationContext, image_store: ImageStore, upload_policy: UploadPolicy):
        cursor = UploadCursor.parse(context.cursor)
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
    registered = context.instance.get_dynamic_partitions(images.name)  # insertion order
    plan = _plan(context, image_store, upload_policy, image_store.objects.list(image_store.prefix), registered, cursor)
    deletions, delete_requests = _deletions(context, registered, plan)
    return _result(context, image_store, upload_policy, registered, plan, plan.cursor, deletions, delete_requests)


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
    return _result(context, image_store, upload_policy, registered, plan, after, [], [])


def _plan(context: dg.SensorEvaluationContext, image_store: ImageStore, upload_policy: UploadPolicy,
          objects: Iterable[StoredObject], registered: list[str], cursor: UploadCursor) -> TickPlan:
    return plan_tick(
        objects,
        set(registered),
        cursor,
        materialized=lambda: context.instance.get_materialized_partitions(SOURCE_IMAGES),
        upload_filter=image_store.upload_filter,
        partition_key_of=partition_key_for,
        lookback=upload_policy.version_lookback,
        max_uploads=upload_policy.max_uploads_per_tick,
        settled_before=image_store.settled_before(),
    )


def _result(context: dg.SensorEvaluationContext, image_store: ImageStore, upload_policy: UploadPolicy,
            registered: list[str], plan: TickPlan, cursor: UploadCursor, deletions: list, delete_requests: list
            ) -> dg.SensorResult:
    summary = describe(plan)
    if not plan.uploads and not delete_requests:
        return dg.SensorResult(skip_reason=f"nothing to process ({summary})", cursor=cursor.dump())
    if not plan.uploads:
        return dg.SensorResult(dynamic_partitions_requests=deletions, run_requests=delete_requests,
                               cursor=cursor.dump())

    new_keys = plan.new_partition_keys
    uploads = {u.partition_key: u.obj for u in plan.uploads}
    versions = {key: obj.etag for key, obj in uploads.items()}
    batches = contiguous_batches(registered + new_keys, versions, upload_policy.batch_size)
    run_keys = [batch_run_key(batch, versions) for batch in batches]
    names = [batch_name(run_key) for run_key in run_keys]
    # The partition -> object mapping is stored before the partitions exist, so no run can start without it:
    # one file per run, not per object (see vision/storage/registrations.py).
    image_store.results.write_registration_batches({
        name: [image_store.registration(key, uploads[key]) for key in batch] for name, batch in zip(names, batches)
    })
    context.log.info(f"{summary}: {len(batches)} run(s)")
    return dg.SensorResult(
        dynamic_partitions_requests=([images.build_add_request(new_keys)] if new_keys else []) + deletions,
        run_requests=[batch_run_request(*launch) for launch in zip(batches, run_keys, names)] + delete_requests,
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
        run_key="delete-" + hashlib.sha256("\n".join(gone).encode()).hexdigest()[:20],
        run_config=delete_run_config(gone, delete_objects=False),
        tags={"vision_assets/deleted": str(len(gone))},
    )
    context.log.info(f"{len(gone)} image(s) removed from the bucket: deleting {gone[:5]}")
    return [images.build_delete_request(gone)], [request]
