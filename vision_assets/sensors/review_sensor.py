"""Reviewers' answers in, applied in bulk (one `apply_reviews` run per tick that read any), from Label Studio's
target storage and our corrections JSON; and the review queue kept current.

The two folders are inboxes: a file read (applied, or refused with its reason) is moved out, to
`~review/applied/` or `~review/refused/`, by the tick after the one that read it (once that tick's run request is
stored, as the upload sensor acknowledges queue messages). So a tick lists only what is new, at most
`FILES_PER_TICK` keys, however many verdicts came before: listing a folder of a million files took 1,000 requests
every tick."""

from __future__ import annotations

import time
from datetime import datetime

import dagster as dg
from pydantic import BaseModel, Field

from ..assets.review_decisions import review_decisions
from ..jobs import apply_reviews, measure_accuracy, refresh_review_queue
from ..keys import QDRANT_INDEX, REVIEW_DECISIONS
from ..partitions import images
from ..resources import ImageStore
from ..vision.cursor import Cursor
from ..vision.records import DetectionsRecord, ImageReview, StoredObject
from ..vision.review.corrections import parse_corrections_file
from ..vision.review.label_studio import parse_annotation_file
from ..vision.review.submissions import Submission, SubmissionError, build_review, merged
from ..vision.storage.object_store import ObjectMissing
from ..vision.storage.overlap import each_image
from ..vision.storage.results_store import (
    DETECTIONS,
    REVIEW,
    REVIEW_ANNOTATIONS,
    REVIEW_APPLIED,
    REVIEW_CORRECTIONS,
    REVIEW_FOLDER,
    REVIEW_REFUSED,
    ResultsStore,
)
from .outages import outages_skip_the_tick
from .run_keys import run_key

FILES_PER_TICK = 1000  # read 16 at a time: a few seconds of a tick on S3
# A file with more entries than this is applied a slice a tick (each entry costs a few store reads and a write:
# 10,000 took 21 s in one tick, and 30,000 would pass Dagster's 60 s sensor timeout).
ENTRIES_PER_TICK = 5000
READ_THREADS = 16
QUEUE_REFRESH_SECONDS = 60  # the review queue is refreshed at most this often, after runs that change it
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]


class Taken(BaseModel):
    """A file a tick read, to be moved out of its inbox by the next tick."""

    key: str
    etag: str
    to: str  # where it goes


class BigFile(BaseModel):
    """A review file with more entries than a tick applies, applied a slice a tick: how far it has got."""

    key: str
    etag: str
    kind: str
    done: int  # entries applied
    total: int


class ReviewCursor(Cursor):
    """The files the last tick read (moved out by this one), and, from versions that left files in place, how far
    they had read: files up to `after` (and the keys seen at `after` itself) were applied, and are moved out unread."""

    take_out: list[Taken] = Field(default_factory=list)
    after: datetime | None = None
    at: list[str] = Field(default_factory=list)
    accuracy_due: bool = False
    queue_seen: int = 0  # the newest storage id of qdrant_index / review_decisions the review queue reflects
    queue_at: float = 0.0  # when the last refresh was requested
    big_file: BigFile | None = None  # being applied a slice a tick; the inbox waits until it is done

    def is_new(self, obj: StoredObject) -> bool:
        return self.after is None or obj.last_modified > self.after or (
            obj.last_modified == self.after and obj.key not in self.at)


def make_review_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(
        name="review_sensor",
        jobs=[apply_reviews, measure_accuracy, refresh_review_queue],
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Reads reviewers' verdicts, from Label Studio's target storage (`<results>~review/annotations/`) "
        "or our corrections JSON (`<results>~review/corrections/`), stores each image's as `~review.json` and "
        "launches one `apply_reviews` run for all the images of the tick; then `measure_accuracy` once they are in. "
        "A file it cannot use is named in the tick's log with the reason, and left where it is. Refreshes "
        "`review_queue` after runs that change it (at most once a minute).",
    )
    @outages_skip_the_tick
    def review_sensor(context: dg.SensorEvaluationContext, image_store: ImageStore):
        cursor = ReviewCursor.parse(context.cursor)
        results = image_store.results
        moved = _take_out(image_store, cursor.take_out)
        cursor.take_out = []
        folders = {f"{results.prefix}{REVIEW_ANNOTATIONS}": "label-studio",
                   f"{results.prefix}{REVIEW_CORRECTIONS}": "corrections"}
        if cursor.big_file is not None:
            return _big_file_slice(context, image_store, cursor, moved)
        listed = [o for folder in folders for o in image_store.objects.list_slice(folder, "", FILES_PER_TICK).objects]
        read_before = [o for o in listed if not cursor.is_new(o)]  # by a version that left files in place
        # In time order within the tick (a later file's review of an image wins); a burst of more than
        # FILES_PER_TICK files is taken in key order across ticks.
        taken = sorted((o for o in listed if cursor.is_new(o)), key=lambda o: (o.last_modified, o.key))[:FILES_PER_TICK]

        def read(obj: StoredObject) -> list[Submission] | str:
            try:
                return _read(image_store, obj, _kind(folders, obj.key))
            except SubmissionError as error:
                return f"{obj.key}: {error}"

        submissions = each_image(read, taken, READ_THREADS)
        big = next(((obj, len(s)) for obj, s in zip(taken, submissions, strict=True)
                    if not isinstance(s, str) and len(s) > ENTRIES_PER_TICK), None)
        if big is not None:  # applied from the next tick on, a slice a tick; the files after it wait for it
            obj, total = big
            cut = taken.index(obj)
            taken, submissions = taken[:cut], submissions[:cut]
            cursor.big_file = BigFile(key=obj.key, etag=obj.etag, kind=_kind(folders, obj.key), done=0, total=total)
            context.log.info(f"{obj.key}: {total:,} entries, applied {ENTRIES_PER_TICK:,} a tick from the next tick on")

        # Every entry of a file is checked before any is stored: a file applies whole or not at all. All the
        # tick's entries are prepared in one pool, however they are spread over files.
        entries = [(n, submission) for n, read_ in enumerate(submissions) if not isinstance(read_, str)
                   for submission in read_]

        def prepare(entry: tuple[int, Submission]) -> ImageReview | SubmissionError:
            n, submission = entry
            try:
                return _prepared_review(context, image_store, submission,
                                        replace=_kind(folders, taken[n].key) == "label-studio")
            except SubmissionError as error:
                return error

        outcomes_of = each_image(prepare, entries, READ_THREADS)
        prepared: list[list[ImageReview] | str] = [read_ if isinstance(read_, str) else [] for read_ in submissions]
        for (n, _), outcome in zip(entries, outcomes_of, strict=True):
            if isinstance(prepared[n], str):
                continue
            if isinstance(outcome, SubmissionError):
                prepared[n] = f"{taken[n].key}: {outcome}"
            else:
                prepared[n].append(outcome)
        reviewed: dict[str, ImageReview] = {}
        problems = [p for p in prepared if isinstance(p, str)]
        for reviews in (p for p in prepared if not isinstance(p, str)):
            for review in reviews:  # files in time order: a later file's review of an image wins
                reviewed[review.partition_key] = review
        _write_reviews(results, reviewed)
        for problem in problems:
            context.log.warning(f"review file not applied (fix it and upload it again): {problem}")
        outcomes = [(o, REVIEW_REFUSED if isinstance(p, str) else REVIEW_APPLIED) for o, p in zip(taken, prepared)]
        cursor.take_out = [Taken(key=o.key, etag=o.etag, to=_destination(results, o.key, outcome))
                           for o, outcome in outcomes + [(o, REVIEW_APPLIED) for o in read_before]]
        runs = []
        if reviewed:
            reviewers = sorted({r.reviewer for r in reviewed.values()})
            runs.append(dg.RunRequest(
                job_name=apply_reviews.name,
                run_key=run_key("reviews", *(f"{o.key}\0{o.etag}" for o in taken)),
                run_config={"ops": {review_decisions.op.name: {"config": {"images": sorted(reviewed)}}}},
                tags={"vision_assets/reviewers": ", ".join(reviewers)[:200], "vision_assets/images": str(len(reviewed))}))
            context.log.info(f"{len(reviewed)} reviewed image(s) from {len(taken)} file(s), applied in one run")
            cursor.accuracy_due = True
        elif cursor.accuracy_due and not _in_flight(context, apply_reviews.name):
            cursor.accuracy_due = False
            runs.append(dg.RunRequest(job_name=measure_accuracy.name, run_key=f"accuracy-{time.time():.0f}"))
        runs += _queue_refresh(context, cursor)
        if not runs and not problems and not taken and not cursor.take_out and not moved and not cursor.big_file:
            return dg.SkipReason("no new review files; the review queue is current")
        if moved:
            context.log.info(f"{moved} review file(s) read by the last tick moved out of the inbox "
                             f"(to {results.prefix}{REVIEW_APPLIED} or {results.prefix}{REVIEW_REFUSED})")
        return dg.SensorResult(run_requests=runs, cursor=cursor.dump())

    return review_sensor


def _kind(folders: dict[str, str], key: str) -> str:
    return next(kind for folder, kind in folders.items() if key.startswith(folder))


def _prepared_reviews(context: dg.SensorEvaluationContext, image_store: ImageStore, submissions: list[Submission],
                      kind: str) -> list[ImageReview]:
    return each_image(lambda s: _prepared_review(context, image_store, s, replace=kind == "label-studio"),
                      submissions, READ_THREADS)


def _write_reviews(results: ResultsStore, reviewed: dict[str, ImageReview]) -> None:
    each_image(lambda review: results.write(review.partition_key, REVIEW, review), list(reviewed.values()),
               READ_THREADS)


def _big_file_slice(context: dg.SensorEvaluationContext, image_store: ImageStore, cursor: ReviewCursor,
                    moved: int) -> dg.SensorResult:
    """The next slice of a big review file: applied whole or not at all, in one `apply_reviews` run; the file leaves
    the inbox after its last slice. Its progress is in the cursor (stored with the tick, so a tick evaluated again
    applies the same slice, and none twice) and in the tick's log. A file changed meanwhile starts again."""
    big, results = cursor.big_file, image_store.results
    if moved:
        context.log.info(f"{moved} review file(s) read by the last tick moved out of the inbox")
    try:
        found = image_store.objects.head(big.key)
    except ObjectMissing:
        context.log.warning(f"{big.key}: removed after {big.done:,} of its {big.total:,} entries were applied")
        cursor.big_file = None
        return dg.SensorResult(cursor=cursor.dump())
    submissions = _read(image_store, StoredObject(key=big.key, etag=found.etag, size=found.size,
                                                  last_modified=found.last_modified), big.kind)
    if found.etag != big.etag:
        context.log.warning(f"{big.key}: changed after {big.done:,} of its entries were applied; applying it again "
                            "from the start")
        big = cursor.big_file = big.model_copy(update={"etag": found.etag, "done": 0, "total": len(submissions)})
    end = min(big.done + ENTRIES_PER_TICK, big.total)
    try:
        reviews = _prepared_reviews(context, image_store, submissions[big.done:end], big.kind)
    except SubmissionError as error:
        context.log.warning(f"review file not applied from entry {big.done + 1:,} on (entries before it were; fix "
                            f"the file and upload the rest again): {big.key}: {error}")
        cursor.take_out = [Taken(key=big.key, etag=big.etag, to=_destination(results, big.key, REVIEW_REFUSED))]
        cursor.big_file = None
        return dg.SensorResult(cursor=cursor.dump())
    reviewed = {review.partition_key: review for review in reviews}  # a later entry of an image wins
    _write_reviews(results, reviewed)
    context.log.info(f"{big.key}: entries {big.done + 1:,}-{end:,} of {big.total:,} applied "
                     f"({100 * end / big.total:.0f}%): {len(reviewed):,} image(s) in one run")
    if end >= big.total:
        cursor.take_out = [Taken(key=big.key, etag=big.etag, to=_destination(results, big.key, REVIEW_APPLIED))]
        cursor.big_file = None
    else:
        cursor.big_file = big.model_copy(update={"done": end})
    cursor.accuracy_due = True
    run = dg.RunRequest(
        job_name=apply_reviews.name, run_key=run_key("reviews", big.key, big.etag, str(big.done)),
        run_config={"ops": {review_decisions.op.name: {"config": {"images": sorted(reviewed)}}}},
        tags={"vision_assets/images": str(len(reviewed)),
              "vision_assets/review_file": f"{big.key} {big.done + 1}-{end} of {big.total}"[:200]})
    return dg.SensorResult(run_requests=[run], cursor=cursor.dump())


def _destination(results: ResultsStore, key: str, outcome: str) -> str:
    """`<results>~review/annotations/17` -> `<results>~review/applied/annotations/17`."""
    return f"{results.prefix}{outcome}{key[len(results.prefix) + len(REVIEW_FOLDER):]}"


def _take_out(image_store: ImageStore, files: list[Taken]) -> int:
    """Move the files the last tick read out of their inbox; a file rewritten since (Label Studio updating an
    annotation) stays, to be read again. Returns how many were moved."""
    store = image_store.objects

    def move(taken: Taken) -> bool:
        try:
            found, data = store.get(taken.key)
        except ObjectMissing:
            return False
        if found.etag != taken.etag:
            return False
        store.put(taken.to, data, "application/json")
        if store.head(taken.key).etag == taken.etag:
            store.delete(taken.key)
        return True

    return sum(each_image(move, list(files), READ_THREADS))


def _queue_refresh(context: dg.SensorEvaluationContext, cursor: ReviewCursor) -> list[dg.RunRequest]:
    """A `refresh_review_queue` run when indexing or reviews changed since the queue was last refreshed, at most
    once a minute and never two at once."""
    newest = 0
    for asset in (QDRANT_INDEX, REVIEW_DECISIONS):
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset, after_storage_id=cursor.queue_seen or None), limit=1).records
        newest = max([newest, *(r.storage_id for r in records)])
    if newest <= cursor.queue_seen or time.time() - cursor.queue_at < QUEUE_REFRESH_SECONDS \
            or _in_flight(context, refresh_review_queue.name):
        return []
    cursor.queue_seen, cursor.queue_at = newest, time.time()
    return [dg.RunRequest(job_name=refresh_review_queue.name, run_key=f"review-queue-{newest}")]


def _read(image_store: ImageStore, obj: StoredObject, kind: str) -> list[Submission]:
    try:
        _, data = image_store.objects.get(obj.key, max_bytes=20 * 1024 * 1024)
    except ObjectMissing as error:
        raise SubmissionError("removed before it could be read") from error
    if kind == "label-studio":
        return [parse_annotation_file(data, obj.key)]
    return parse_corrections_file(data, obj.key, obj.last_modified)


def _prepared_review(context: dg.SensorEvaluationContext, image_store: ImageStore, submission: Submission,
                     replace: bool) -> ImageReview:
    """The submission as the image's next `~review.json`. A Label Studio annotation is the reviewer's whole answer and
    replaces what was there; a corrections entry adds to it (a later decision on the same box wins)."""
    key, results = submission.partition_key, image_store.results
    if not context.instance.has_dynamic_partition(images.name, key):
        raise SubmissionError(f"no image {key!r} in the catalogue")
    source = results.read_source_record(key)
    detections = results.read(key, DETECTIONS, DetectionsRecord)
    if source is None or not source.is_valid or detections is None:
        raise SubmissionError(f"{key!r} has not been processed (or was rejected): nothing to review yet")
    review = build_review(submission, source.sha256, detections, results.read_labels(key))
    return review if replace else merged(results.read(key, REVIEW, ImageReview), review)


def _in_flight(context: dg.SensorEvaluationContext, job_name: str) -> bool:
    return bool(context.instance.get_run_records(dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT), limit=1))
