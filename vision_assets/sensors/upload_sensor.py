"""Registers new uploads as partitions and launches one run per batch of them."""


import hashlib

import dagster as dg

from ..checks.validation import SOURCE_IMAGES
from ..jobs import process_images
from ..partitions import images, partition_key_for
from ..resources import ImageStore, UploadPolicy
from ..vision.upload_tracking import TickPlan, UploadCursor, contiguous_batches, plan_tick

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def batch_run_request(batch: list[str], versions: dict[str, str]) -> dg.RunRequest:
    # The run key names the exact object versions, so a re-evaluated tick never launches the same batch twice
    # while a re-upload (new etag) always gets a new run.
    identity = "\n".join(f"{key}\0{versions[key]}" for key in batch)
    return dg.RunRequest(
        run_key=f"upload-batch-{hashlib.sha256(identity.encode()).hexdigest()[:20]}",
        tags={RANGE_START: batch[0], RANGE_END: batch[-1], "vision_assets/images": str(len(batch))},
    )


def describe(plan: TickPlan) -> str:
    parts = [f"{len(plan.new_partition_keys)} new", f"{len(plan.uploads) - len(plan.new_partition_keys)} re-uploaded"]
    if plan.deferred:
        parts.append(f"{plan.deferred} still being written")
    if plan.ignored:
        parts.append(f"{plan.ignored} ignored by extension (e.g. {', '.join(plan.ignored_examples)})")
    if plan.conflicts:
        parts.append(f"{len(plan.conflicts)} skipped because their partition key is taken: {plan.conflicts[:5]}")
    return ", ".join(parts)


def make_upload_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="upload_sensor",
        job=process_images,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Lists the bucket, registers every new or re-uploaded image as a partition of `images`, and "
        "launches one `process_images` run per batch.",
    )
    def upload_sensor(context: dg.SensorEvaluationContext, image_store: ImageStore, upload_policy: UploadPolicy):
        registered = context.instance.get_dynamic_partitions(images.name)  # insertion order
        plan = plan_tick(
            image_store.objects.list(image_store.prefix),
            set(registered),
            UploadCursor.parse(context.cursor),
            materialized=lambda: context.instance.get_materialized_partitions(SOURCE_IMAGES),
            upload_filter=image_store.upload_filter,
            partition_key_of=partition_key_for,
            lookback=upload_policy.version_lookback,
            max_uploads=upload_policy.max_uploads_per_tick,
            settled_before=image_store.settled_before(),
        )
        summary = describe(plan)
        if not plan.uploads:
            return dg.SensorResult(skip_reason=f"nothing to process ({summary})", cursor=plan.cursor.dump())

        # The partition -> object mapping is stored before the partitions exist, so no run can start without it.
        image_store.results.write_registrations([image_store.registration(u.partition_key, u.obj) for u in plan.uploads])
        new_keys = plan.new_partition_keys
        versions = {u.partition_key: u.obj.etag for u in plan.uploads}
        batches = contiguous_batches(registered + new_keys, versions, upload_policy.batch_size)
        context.log.info(f"{summary}: {len(batches)} run(s)")
        return dg.SensorResult(
            dynamic_partitions_requests=[images.build_add_request(new_keys)] if new_keys else [],
            run_requests=[batch_run_request(batch, versions) for batch in batches],
            cursor=plan.cursor.dump(),
        )

    return upload_sensor
