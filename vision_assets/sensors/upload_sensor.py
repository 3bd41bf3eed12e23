"""Registers new uploads in upload batches (a partition of `batches` and a manifest each) and launches one run
per batch."""


import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import dagster as dg

from ..assets.deletion import delete_run_config
from ..jobs import PROCESS_IMAGES, delete_images
from ..keys import SOURCE_IMAGES
from ..partitions import batches, images, partition_key_for, slugged_images
from ..resources import ImageStore, S3ImageStore, UploadPolicy
from ..vision.batches import BatchManifest, batch_key, next_number
from ..vision.chunking import chunked
from ..vision.deletion import safe_to_delete
from ..vision.listing_pass import (
    ListingPass,
    SluggedPresence,
    confirmed_gone,
    new_pass,
    resume_after,
)
from ..vision.records import StoredObject
from ..vision.storage import tick_ledger
from ..vision.storage.object_store import ListedSlice
from ..vision.storage.s3_events import QueueMessage
from ..vision.upload_tracking import TickPlan, UploadCursor, plan_tick, shown
from .batch_migration import migrate_slice
from .empty_batches import empty_batches, sweep_due
from .image_registry import ImageRegistry
from .outages import outages_skip_the_tick
from .run_keys import run_key

if TYPE_CHECKING:
    from ..dagster_internals import PipelineJob

IMAGES_TAG = "vision_assets/images"  # how many images a run's batches hold


@dataclass
class DeletionJudgement:
    """Registered images a listing shows gone, out of how many it could have shown gone."""

    gone: list[str]
    judged: int

    def add(self, gone: list[str], judged: int) -> None:
        self.gone += gone
        self.judged += judged


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


def make_upload_sensor(pipeline: "PipelineJob", minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="upload_sensor",
        jobs=[pipeline, delete_images],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Registers every new or re-uploaded image in an upload batch (a partition of `batches`, its "
        "manifest in the results store) and launches one `process_images` run per batch; images whose object is "
        "gone are deleted (`delete_images`). Lists the bucket a slice per tick (at most "
        "VISION_ASSETS_LIST_KEYS_PER_TICK keys, resumed where the last slice ended; the log says how far the pass is), "
        "or, with an S3 events queue, reads the queue and lists only to reconcile. Moves an instance that had one "
        "partition per image to batches first.",
    )
    @outages_skip_the_tick
    def upload_sensor(context: dg.SensorEvaluationContext, image_store: ImageStore, upload_policy: UploadPolicy):
        cursor = UploadCursor.parse(context.cursor)
        if cursor.decided_tick:  # that tick's cursor is this one: it was stored, its decision file is done with
            tick_ledger.forget(image_store.results, cursor.decided_tick)
            cursor = cursor.model_copy(update={"decided_tick": None})
        moving = migrate_slice(context, image_store, upload_policy, cursor)
        if isinstance(moving, dg.SensorResult):
            return moving
        cursor = moving
        queue = image_store.event_queue() if isinstance(image_store, S3ImageStore) else None
        messages = []
        if queue is not None:
            if cursor.acknowledge:
                # The previous tick's messages: its cursor was stored, so its partitions and run requests are applied.
                queue.delete(cursor.acknowledge)
                cursor = cursor.model_copy(update={"acknowledge": []})
            messages = queue.receive(upload_policy.max_uploads_per_tick)
        listing = _listing_due(context, image_store, cursor, queue is not None)
        empty, cursor = _empty_batches_due(context, image_store, cursor)
        if listing is None and not messages and not empty:
            return dg.SensorResult(skip_reason="no upload events in the queue", cursor=cursor.dump())
        return _tick(context, image_store, upload_policy, cursor, messages, listing, empty)

    return upload_sensor


def _empty_batches_due(context: dg.SensorEvaluationContext, image_store: ImageStore,
                       cursor: UploadCursor) -> tuple[list, UploadCursor]:
    """Every ten minutes: the delete request for batch partitions that will never run (sensors/empty_batches.py)."""
    now = time.time()
    if not sweep_due(cursor.swept_at, now):
        return [], cursor
    cursor = cursor.model_copy(update={"swept_at": now})
    empty = empty_batches(context.instance, image_store, now)
    if not empty:
        return [], cursor
    context.log.info(f"removing {len(empty)} batch partition(s) that will never run: "
                     + "; ".join(f"{batch} ({why})" for batch, why in list(empty.items())[:10]))
    return [batches.build_delete_request(sorted(empty))], cursor


def _listing_due(context: dg.SensorEvaluationContext, image_store: ImageStore, cursor: UploadCursor,
                 events: bool) -> ListingPass | None:
    """The listing pass this tick lists a slice of: the one in progress, or a new one (always without an events
    queue; with one, every `reconcile_seconds`)."""
    if cursor.listing is not None:
        return cursor.listing
    if events and cursor.listed_at is not None and time.time() - cursor.listed_at < image_store.reconcile_seconds:
        return None
    if events:
        context.log.info("listing the bucket to reconcile with the upload events (missed or lost events, "
                         "deleted objects)")
    return new_pass(cursor.passes + 1, fresh=cursor.watermark is None)


def _tick(context: dg.SensorEvaluationContext, image_store: ImageStore, upload_policy: UploadPolicy,
          cursor: UploadCursor, messages: list[QueueMessage], listing: ListingPass | None,
          empty: list) -> dg.SensorResult:
    announced = _announced(context, image_store, messages)
    listed = None
    if listing is not None:
        listed = image_store.objects.list_slice(image_store.prefix, listing.after, upload_policy.list_keys_per_tick)
    newest: dict[str, StoredObject] = {obj.key: obj for obj in (listed.objects if listed else [])}
    for obj in announced:  # an event and a listing may name one object: its newest version counts
        if obj.key not in newest or obj.last_modified >= newest[obj.key].last_modified:
            newest[obj.key] = obj
    registry = ImageRegistry(context.instance, slugged_kept=cursor.slugged_kept)
    candidates = [partition_key_for(image_store.upload_filter.relative(obj.key)) for obj in newest.values()
                  if image_store.upload_filter.accepts(obj.key)]
    plan = _plan(context, image_store, upload_policy, newest.values(), registry.among(candidates), cursor,
                 fresh=listing.fresh if listing else None, slice_of_listing=listing is not None)
    after = plan.cursor.model_copy(update={"acknowledge": [m.receipt for m in messages]})
    partition_requests, delete_requests, note = [], [], ""
    if listing is not None and listed is not None:
        after, gone, note = _listing_progress(context, image_store, after, listing, listed, plan, registry)
        partition_requests, delete_requests = _deletions(context, gone)
    partition_requests += empty
    if not cursor.slugged_kept:  # once: the slugged ids registered so far, kept apart from now on
        if earlier_slugged := registry.slugged():
            partition_requests.append(slugged_images.build_add_request(earlier_slugged))
        after = after.model_copy(update={"slugged_kept": True})
    return _result(context, image_store, upload_policy, plan, after, partition_requests, delete_requests, note)


def _announced(context: dg.SensorEvaluationContext, image_store: ImageStore,
               messages: list[QueueMessage]) -> list[StoredObject]:
    """The newest version of each object the queue's messages announce."""
    latest: dict[str, StoredObject] = {}
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
    return list(latest.values())


def _listing_progress(context: dg.SensorEvaluationContext, image_store: ImageStore, cursor: UploadCursor,
                      listing: ListingPass, listed: ListedSlice, plan: TickPlan,
                      registry: ImageRegistry) -> tuple[UploadCursor, DeletionJudgement, str]:
    """The cursor after this slice, what it shows gone, and a line on the pass's progress."""
    end = listed.last_key if listed.truncated else None
    in_range = registry.in_key_range(image_store.prefix, listing.after, end)
    judgement = DeletionJudgement([image for image in in_range if image not in plan.present], len(in_range))
    resume, complete = resume_after(listed, listing.after, plan.waiting)
    if listing.slices == 0 and complete:  # the whole bucket in one slice: what it listed is all there is
        slugged_registered = registry.slugged()
        judgement.add(sorted(set(slugged_registered) - plan.present), len(slugged_registered))
        return _pass_complete(cursor, listing, len(listed.objects)), judgement, ""
    presence = SluggedPresence(image_store.results)
    presence.record(listing, _slugged_keys(image_store, listed))
    done_so_far = listing.model_copy(update={"after": resume, "listed": listing.listed + len(listed.objects),
                                             "slices": listing.slices + 1})
    if not complete:
        note = f"{done_so_far.progress(cursor.last_pass_keys)}; the next slice starts after {shown(resume)}"
        context.log.info(note)
        return cursor.model_copy(update={"listing": done_so_far, "listed_at": listing.started_at}), judgement, note
    judgement.add(*_slugged_gone(image_store, presence, listing, plan, registry))
    presence.forget_all_but(listing)
    note = f"{done_so_far.progress(None)}: complete in {time.time() - listing.started_at:.0f} s"
    context.log.info(note)
    return _pass_complete(cursor, listing, done_so_far.listed), judgement, note


def _pass_complete(cursor: UploadCursor, listing: ListingPass, keys: int) -> UploadCursor:
    return cursor.model_copy(update={"listing": None, "passes": listing.number, "listed_at": listing.started_at,
                                     "last_pass_keys": keys})


def _slugged_keys(image_store: ImageStore, listed: ListedSlice) -> dict[str, str]:
    """The uploads of the slice whose id is slugged: id -> object key."""
    ids = {obj.key: partition_key_for(image_store.upload_filter.relative(obj.key))
           for obj in listed.objects if image_store.upload_filter.accepts(obj.key)}
    return {image: key for key, image in ids.items() if "~" in image}


def _slugged_gone(image_store: ImageStore, presence: SluggedPresence, listing: ListingPass, plan: TickPlan,
                  registry: ImageRegistry) -> tuple[list[str], int]:
    """At the end of a pass of several slices: the registered slugged ids that no slice listed and whose object is
    missing (named by the previous pass's notes, or by the image's registration), out of how many slugged ids."""
    notes = presence.passes()
    this_pass = notes.pop(presence.folder(listing), {})
    known = {image: key for earlier in notes.values() for image, key in earlier.items()}
    slugged_registered = registry.slugged()
    candidates = {image: known.get(image) for image in slugged_registered
                  if image not in this_pass and image not in plan.present}
    gone = confirmed_gone(candidates, lambda image: _object_key_of(image_store, image), image_store.objects.head)
    return gone, len(slugged_registered)


def _object_key_of(image_store: ImageStore, image: str) -> str | None:
    """The object an image was read from: its source record says (an image not ingested yet: None)."""
    record = image_store.results.read_source_record(image)
    if record is not None and record.object_key:
        return record.object_key
    registration = image_store.results.read_registration(image)  # a batch made from an older instance
    return registration.object_key if registration else None


def _plan(context: dg.SensorEvaluationContext, image_store: ImageStore, upload_policy: UploadPolicy,
          objects: Iterable[StoredObject], registered: set[str], cursor: UploadCursor, fresh: bool | None,
          slice_of_listing: bool) -> TickPlan:
    return plan_tick(
        objects,
        registered,
        cursor,
        materialized=lambda: _ingested_images(context, image_store),
        upload_filter=image_store.upload_filter,
        partition_key_of=partition_key_for,
        lookback=upload_policy.version_lookback,
        max_uploads=upload_policy.max_uploads_per_tick,
        settled_before=image_store.settled_before(),
        fresh=fresh,
        slice_of_listing=slice_of_listing,
    )


def _ingested_images(context: dg.SensorEvaluationContext, image_store: ImageStore) -> set[str]:
    """The images of every batch `source_images` has materialized (asked only when the cursor is fresh)."""
    done = sorted(context.instance.get_materialized_partitions(SOURCE_IMAGES))
    manifests = image_store.results.read_manifests(done)
    return {image for manifest in manifests.values() if manifest for image in manifest.images}


def _result(context: dg.SensorEvaluationContext, image_store: ImageStore, upload_policy: UploadPolicy,
            plan: TickPlan, cursor: UploadCursor, partition_requests: list, delete_requests: list,
            note: str = "") -> dg.SensorResult:
    summary = describe(plan)
    if not plan.uploads and not delete_requests and not partition_requests:
        return dg.SensorResult(skip_reason=f"nothing to process ({summary})" + (f"; {note}" if note else ""),
                               cursor=cursor.dump())
    if not plan.uploads:
        return dg.SensorResult(dynamic_partitions_requests=partition_requests, run_requests=delete_requests,
                               cursor=cursor.dump())

    new_keys = plan.new_partition_keys
    uploads = {u.partition_key: u.obj for u in plan.uploads}
    versions = {key: obj.etag for key, obj in uploads.items()}
    # The same keys when this tick is evaluated again from the same cursor (a daemon that died before storing it).
    tick = tick_ledger.tick_id(context.cursor)
    earlier = tick_ledger.decided(image_store.results, tick)
    if earlier is not None:
        now, first = earlier.registered_at, earlier.first
        context.log.info(f"this tick was evaluated before (from the same cursor) and not stored: its batches keep "
                         f"the keys it gave them ({batch_key(now, first)} on)")
    else:
        now = datetime.now(UTC).replace(microsecond=0)
        first = next_number(now, context.instance.get_dynamic_partitions(batches.name))
        tick_ledger.decide(image_store.results, tick, tick_ledger.TickBatches(registered_at=now, first=first))
    cursor = cursor.model_copy(update={"decided_tick": tick})
    # The manifests are stored before the partitions exist, so no run can start without its own: one file per batch,
    # not per object. A re-upload goes in a new batch like a new image; its older batch's entry is superseded.
    manifests = [
        BatchManifest(batch=batch_key(now, first + number), created_at=now, images=list(group),
                      registrations=[image_store.registration(key, uploads[key]) for key in group])
        for number, group in enumerate(chunked(list(uploads), upload_policy.batch_size))
    ]
    image_store.results.write_manifests(manifests)
    context.log.info(f"{summary}: {len(manifests)} batch(es), one run each")
    requests = [dg.RunRequest(job_name=PROCESS_IMAGES, partition_key=manifest.batch,
                              run_key=batch_run_key(manifest.images, versions),
                              tags={IMAGES_TAG: str(len(manifest.images))}) for manifest in manifests]
    new_slugged = [key for key in new_keys if "~" in key]
    return dg.SensorResult(
        dynamic_partitions_requests=([images.build_add_request(new_keys)] if new_keys else [])
        + ([slugged_images.build_add_request(new_slugged)] if new_slugged else [])
        + [batches.build_add_request([manifest.batch for manifest in manifests])] + partition_requests,
        run_requests=requests + delete_requests,
        cursor=cursor.dump(),
    )


def _deletions(context: dg.SensorEvaluationContext, judgement: DeletionJudgement):
    """Registered images whose object is no longer in the bucket: their partitions go, and a delete_images run
    removes their points and results."""
    gone = sorted(judgement.gone)
    if not gone:
        return [], []
    if not safe_to_delete(len(gone), judgement.judged):
        context.log.warning(f"{len(gone)} of {judgement.judged} images look deleted from the bucket: not deleting "
                            "anything (wrong prefix? partial listing?). Run delete_images to confirm.")
        return [], []
    request = dg.RunRequest(
        job_name=delete_images.name,
        run_key=run_key("delete", *gone),
        run_config=delete_run_config(gone, delete_objects=False),
        tags={"vision_assets/deleted": str(len(gone))},
    )
    context.log.info(f"{len(gone)} image(s) removed from the bucket: deleting {gone[:5]}")
    slugged_gone = [image for image in gone if "~" in image]
    return ([images.build_delete_request(gone)]
            + ([slugged_images.build_delete_request(slugged_gone)] if slugged_gone else [])), [request]
