"""`source_images`: every uploaded object of the batch fetched, validated, normalised to RGB and hashed; and its
check, `images_valid` (ERROR: a rejected image goes no further, the rest of the batch does)."""

import threading
import time
from collections import Counter

import dagster as dg

from ..keys import SOURCE_IMAGES
from ..partitions import batches
from ..resources import CallbackSettings, ImageSelection, ImageStore, IngestPolicy, ReviewSettings, StagePolicy
from ..vision.batches import superseded_by
from ..vision.callback import Outbox, rejected_message
from ..vision.images.ingest import ingest_image
from ..vision.images.review import ReviewPictures, markdown_image
from ..vision.records import SourceImageRecord
from ..vision.storage.overlap import BackgroundWrites, as_they_finish, each_image
from ..vision.storage.results_store import ResultsStore
from .batch_checks import BatchCheck, ImageOutcome
from .stage import BACKFILL_POLICY, BatchMetadata, run_images, step_progress, transient_faults_retried

image_validity = BatchCheck(
    asset=SOURCE_IMAGES,
    name="images_valid",
    severity=dg.AssetCheckSeverity.ERROR,
    description="Each object decoded as an image and passed the limits; if not, the reason (and what still "
    "decodes of it). Rejected images go no further.",
    not_passed="rejected",
)


def validation_outcome(record: SourceImageRecord, preview_markdown: str | None = None) -> ImageOutcome:
    if record.rejection:
        description = f"rejected ({record.rejection.code.value}): {record.rejection.message}"
        return ImageOutcome(record.partition_key, False, description, picture=preview_markdown,
                            facts={f"rejected_{record.rejection.code.value}": 1})
    facts = record.facts
    return ImageOutcome(record.partition_key, True, f"valid {facts.format}, {facts.width}x{facts.height}",
                        facts={"bytes": record.size_bytes})


def stored_validity(results: ResultsStore):
    def judge(image: str, batch: str) -> ImageOutcome | str:
        record = results.read_source_record(image)
        if record is None:
            return "not ingested: materialize source_images first"
        if newer := superseded_by(record.batch, batch):
            return f"superseded: re-uploaded in batch {newer}"
        return validation_outcome(record)
    return judge


@dg.asset(
    key=SOURCE_IMAGES,
    partitions_def=batches,
    backfill_policy=BACKFILL_POLICY,
    check_specs=[image_validity.spec],
    group_name="ingest",
    kinds={"python"},
    code_version="2",
    description="Each uploaded object of the batch fetched and validated (magic bytes, size, full decode, pixel "
    "limit, minimum size), EXIF-oriented, normalised to RGB, hashed (sha256, pHash). Writes `~normalized.jpg` and "
    "`~source.json` per image to the results store.",
)
@transient_faults_retried
def source_images(
    context: dg.AssetExecutionContext,
    image_store: ImageStore,
    ingest_policy: IngestPolicy,
    callback: CallbackSettings,
    review: ReviewSettings,
    stage_policy: StagePolicy,
    image_selection: ImageSelection,
):
    results, objects, limits = image_store.results, image_store.objects, ingest_policy.limits
    taken = run_images(context, results, image_selection)
    registrations = taken.registrations(results)
    batch_of = taken.batch_of
    look = review.look
    preview_side = look.side if look else None

    def ingest(image: str) -> SourceImageRecord | str:
        earlier = results.read_source_record(image)
        if earlier is not None and (newer := superseded_by(earlier.batch, batch_of[image])):
            return f"superseded: re-uploaded in batch {newer}"
        return ingest_image(image, objects, results, limits, preview_side, registrations, ingest_policy.working_side,
                            batch=batch_of[image], model_side=ingest_policy.model_input_side,
                            decode_slot=decode_slots)

    decode_slots = threading.BoundedSemaphore(max(1, ingest_policy.threads))
    started = time.perf_counter()
    progress = step_progress(context, results, "source_images")
    resumed = progress.finished()
    outbox = Outbox(results) if callback.enabled else None
    ingested: dict[str, SourceImageRecord | str] = {}
    # Fetching and writing are round trips, and Pillow releases the GIL while decoding, so threads overlap all
    # three. Many images are fetched and written at once, `ingest_policy.threads` of them decoded at once (a decoded
    # photo is large: memory follows those slots). A chunk is recorded as it finishes, in the order images finish (a
    # stalled fetch holds up its own image only). The store failing (not an image) retries the step, which resumes
    # after the chunks already recorded.
    todo = [image for image in dict.fromkeys(taken.images) if image not in resumed]
    with BackgroundWrites() as recording:
        for chunk in as_they_finish(ingest, todo, stage_policy.chunk_size):
            done = dict(chunk)
            if outbox:  # a rejected image is finished here; the callback sensor announces it
                for record in done.values():
                    if isinstance(record, SourceImageRecord) and not record.is_valid:
                        outbox.add(rejected_message(record))
            ingested |= done
            recording.submit([], then=progress.after_writing(done))
    seconds = time.perf_counter() - started
    records = [r for r in ingested.values() if isinstance(r, SourceImageRecord)]
    skipped = {image: why for image, why in ingested.items() if isinstance(why, str)}
    # What earlier attempts of this step finished: their records, for the batch's counts (the check reads them too).
    finished_earlier = [image for image in dict.fromkeys(taken.images) if image in resumed]
    for image, record in zip(finished_earlier, each_image(results.read_source_record, finished_earlier), strict=True):
        if record is not None:
            newer = superseded_by(record.batch, batch_of[image])
            ingested[image] = f"superseded: re-uploaded in batch {newer}" if newer else record
            if newer:
                skipped[image] = ingested[image]

    rejected = Counter(r.rejection.code.value for r in records if r.rejection)
    context.log.info(f"{len(records)} images in {seconds:.1f}s: {len(records) - sum(rejected.values())} valid, "
                     f"rejected {dict(rejected) or 'none'}" + (f", {len(skipped)} superseded" if skipped else "")
                     + (f"; {len(resumed)} finished by an earlier attempt of this step" if resumed else ""))
    metadata = BatchMetadata(context)
    for batch, images in taken.by_batch.items():
        mine = [ingested[i] for i in images if isinstance(ingested.get(i), SourceImageRecord)]
        metadata.add(batch, {"images": len(images), "valid": sum(r.is_valid for r in mine),
                             "rejected": sum(not r.is_valid for r in mine),
                             "superseded": sum(i in skipped for i in images),
                             "bytes": sum(r.size_bytes for r in mine)})
    progress.clear()
    yield metadata.materialize()
    outcomes = {record.partition_key: validation_outcome(record, rejected_preview(results, record, look))
                for record in records}
    yield from image_validity.report(
        context, taken, outcomes, skipped, stored_validity(results),
        run_seconds=round(seconds, 3),
        run_images_per_second=round(len(records) / seconds, 2) if seconds else 0.0,
    )


def rejected_preview(results: ResultsStore, record: SourceImageRecord, look: ReviewPictures | None) -> str | None:
    if not (look and record.preview_key):
        return None
    preview = results.read_image(record.preview_key)
    return markdown_image(f"what still decodes of {record.partition_key}", preview, look.quality) if preview else None
