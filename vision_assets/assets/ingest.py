"""`source_images`: every uploaded object fetched, validated, normalised to RGB and hashed."""

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg

from ..checks.validation import SOURCE_IMAGES, image_validity, validation_outcome
from ..partitions import images
from ..resources import CallbackSettings, ImageStore, IngestPolicy, ReviewSettings, StagePolicy
from ..vision.callback import Outbox, rejected_message
from ..vision.images.ingest import ingest_image
from ..vision.images.review import ReviewPictures, markdown_image
from ..vision.records import SourceImageRecord
from ..vision.storage.registrations import REGISTRATIONS_TAG, Registrations
from ..vision.storage.results_store import ResultsStore
from .stage import ImageMetadata, transient_faults_retried


def image_metadata(record: SourceImageRecord) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "status": record.status,
        "source_uri": record.source_uri,
        "bytes": record.size_bytes,
        "sha256": record.sha256 or "",
    }
    if record.rejection:
        metadata |= {"rejection": record.rejection.code.value, "rejection_message": record.rejection.message}
    if record.facts:
        facts = record.facts
        metadata |= {
            "dimensions": f"{facts.width}x{facts.height}",
            "width": facts.width,
            "height": facts.height,
            "format": facts.format,
            "original_mode": facts.original_mode,
            "frames": facts.frames,
            "phash": facts.phash,
            "normalized_key": record.normalized_key or "",
        }
    if record.warnings:
        metadata["warnings"] = "\n".join(record.warnings)
    return metadata


@dg.asset(
    key=SOURCE_IMAGES,
    partitions_def=images,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=image_validity.specs,
    group_name="ingest",
    kinds={"python"},
    code_version="1",
    description="Each uploaded object fetched and validated (magic bytes, size, full decode, pixel limit, minimum "
    "size), EXIF-oriented, normalised to RGB, hashed (sha256, pHash). Writes `~normalized.jpg` and `~source.json` "
    "per image to the results store.",
)
@transient_faults_retried
def source_images(
    context: dg.AssetExecutionContext,
    image_store: ImageStore,
    ingest_policy: IngestPolicy,
    callback: CallbackSettings,
    review: ReviewSettings,
    stage_policy: StagePolicy,
):
    keys = context.partition_keys
    started = time.perf_counter()
    objects, results, limits = image_store.objects, image_store.results, ingest_policy.limits
    look = review.look
    preview_side = look.side if look else None
    # Fetching is I/O and Pillow releases the GIL while decoding, so threads overlap both; each thread holds one
    # image decoded at a time, so memory follows the thread count. The store failing (not an image) retries the step.
    registrations = Registrations(results, context.run.tags.get(REGISTRATIONS_TAG))
    with ThreadPoolExecutor(max_workers=max(1, ingest_policy.threads)) as pool:
        records = list(pool.map(
            lambda key: ingest_image(key, objects, results, limits, preview_side, registrations,
                                     ingest_policy.working_side), keys))
    seconds = time.perf_counter() - started

    metadata = ImageMetadata(context)
    for record in records:
        metadata.add(record.partition_key, image_metadata(record))
    if callback.enabled:  # a rejected image is finished here; the callback sensor announces it
        outbox = Outbox(results)
        for record in records:
            if not record.is_valid:
                outbox.add(rejected_message(record))
    rejected = Counter(r.rejection.code.value for r in records if r.rejection)
    context.log.info(f"{len(records)} images in {seconds:.1f}s: {len(records) - sum(rejected.values())} valid, "
                     f"rejected {dict(rejected) or 'none'}")
    yield metadata.materialize()  # per-image facts went on each partition above; batch facts go on the batch check
    outcomes = [validation_outcome(record, rejected_preview(results, record, look)) for record in records]
    yield from image_validity.report(
        context, outcomes, skipped={},
        batch_valid=len(records) - sum(rejected.values()),
        batch_rejected=dict(rejected),
        batch_seconds=round(seconds, 3),
        batch_images_per_second=round(len(records) / seconds, 2) if seconds else 0.0,
    )


def rejected_preview(results: ResultsStore, record: SourceImageRecord, look: ReviewPictures | None) -> str | None:
    if not (look and record.preview_key):
        return None
    preview = results.read_image(record.preview_key)
    return markdown_image(f"what still decodes of {record.partition_key}", preview, look.quality) if preview else None
