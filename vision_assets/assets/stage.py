"""What every stage shares: how it fails (a store or Qdrant outage is waited out, anything else is final), which
images of its batches it takes (the current version of each, a rejected image going no further, each skip said
why), how it reads them (a chunk at a time), and how per-batch facts reach each batch's materialization."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

import dagster as dg

from ..dagster_internals import set_partition_metadata
from ..partitions import batches
from ..resources import ImageSelection, StagePolicy
from ..vision.batches import BatchManifest, superseded_by
from ..vision.index.connection import IndexUnavailable
from ..vision.models.remote import ModelServiceUnavailable
from ..vision.records import SourceImageRecord
from ..vision.storage.object_store import StoreUnavailable
from ..vision.storage.overlap import as_they_finish, each_image, together
from ..vision.storage.registrations import Registrations
from ..vision.storage.results_store import ResultsStore
from ..vision.storage.step_progress import StepProgress

# The model service unreachable (restarting, a worker that died) is waited out like the store.
TRANSIENT = (StoreUnavailable, IndexUnavailable, ModelServiceUnavailable)
T = TypeVar("T")
A = TypeVar("A")
# Dagster's run-retry tag (public as a string in its docs): "false" keeps Dagster's run retries off this run.
RETRY_ON_ASSET_OR_OP_FAILURE_TAG = "dagster/retry_on_asset_or_op_failure"


def step_progress(context: dg.AssetExecutionContext, results: ResultsStore, stage: str) -> StepProgress:
    """What this run's step finished in its earlier attempts: a retry resumes after it (step_progress.py)."""
    return StepProgress(results, context.run.run_id, stage, context.retry_number)


class StepStart(NamedTuple):
    """Where a model stage's step begins."""

    progress: StepProgress
    resumed: set[str]  # the images earlier attempts of the step finished
    done: set[str]  # those of them that were valid
    skipped: dict[str, str]  # image -> why it goes no further, as far as known before reading
    todo: list[str]  # the images this attempt reads


def step_start(context: dg.AssetExecutionContext, results: ResultsStore, taken: RunImages, stage: str) -> StepStart:
    """The step's progress, and the run's entries judged before reading: those of the images earlier attempts
    finished (for the batches' counts) and those in an older batch than the image's newest in this run (which
    `read_ahead` does not read)."""
    progress = step_progress(context, results, stage)
    resumed = progress.finished()
    batch_of = taken.batch_of
    entries = [(batch, image) for batch, images in taken.by_batch.items() for image in images
               if image in resumed or batch != batch_of[image]]
    judged = list(zip(entries, each_image(lambda entry: source_state(results, entry[1], entry[0]), entries),
                      strict=True))
    done = {image for (_, image), (why, _) in judged if image in resumed and not why}
    skipped = ({image: why for (_, image), (why, _) in judged if why and image in resumed}
               | {image: why for (batch, image), (why, _) in judged if why and batch != batch_of[image]})
    return StepStart(progress, resumed, done, skipped, [image for image in taken.images if image not in resumed])


def transient_faults_retried(stage: Callable[..., Iterator]) -> Callable[..., Iterator]:
    """Wrap a stage (a generator taking `context` and a `stage_policy` resource).

    - The store or Qdrant unreachable: the step is retried after a wait that doubles each time. Past the last
      retry the step fails, and Dagster's run retries (the instance's `run_retries`) re-execute the run from it.
    - Anything else (a bug, a damaged index, a mismatched collection) is not healed by waiting: the run is tagged
      so that Dagster's run retries leave it failed, with its error, for a person.
    """

    @functools.wraps(stage)
    def guarded(context: dg.AssetExecutionContext, *args, **kwargs) -> Iterator:
        policy: StagePolicy = kwargs["stage_policy"]
        try:
            yield from stage(context, *args, **kwargs)
        except TRANSIENT as error:
            wait = policy.wait_before_retry(context.retry_number)
            if context.retry_number < policy.retries:
                context.log.warning(f"{error}; retry {context.retry_number + 1} of {policy.retries} in {wait:.0f}s")
            raise dg.RetryRequested(max_retries=policy.retries, seconds_to_wait=wait) from error
        except Exception:
            context.instance.add_run_tags(context.run.run_id, {RETRY_ON_ASSET_OR_OP_FAILURE_TAG: "false"})
            raise

    return guarded


@dataclass(frozen=True)
class RunImages:
    """The images a run takes, per batch: every image of each of its batches' manifests, or those of them the
    run's `image_selection` names."""

    manifests: dict[str, BatchManifest]  # batch -> manifest, in the run's partition order
    by_batch: dict[str, list[str]]  # batch -> the image ids this run takes

    @property
    def images(self) -> list[str]:
        return [image for images in self.by_batch.values() for image in images]

    @property
    def batch_of(self) -> dict[str, str]:
        return {image: batch for batch, images in self.by_batch.items() for image in images}

    def registrations(self, results: ResultsStore) -> Registrations:
        return Registrations(results, self.manifests.values())


class MissingManifest(RuntimeError):
    pass


def run_images(context: dg.AssetExecutionContext, results: ResultsStore, selection: ImageSelection) -> RunImages:
    keys = list(context.partition_keys)
    manifests = results.read_manifests(keys)
    missing = [key for key, manifest in manifests.items() if manifest is None]
    if missing:
        raise MissingManifest(
            f"no manifest for batch(es) {missing[:5]} under {results.prefix}~batches/: the results store lost them "
            "(deleted by hand, or another results prefix). Their images are still registered: re-upload them, or "
            "restore the files.")
    only = selection.only
    by_batch = {key: [i for i in manifests[key].images if only is None or i in only] for key in keys}
    if only is not None:
        unknown = only - {i for images in by_batch.values() for i in images}
        if unknown:
            context.log.warning(f"image_selection names {len(unknown)} image(s) not in this run's batches, left "
                                f"alone: {sorted(unknown)[:10]}")
    return RunImages(manifests=manifests, by_batch=by_batch)


@dataclass(frozen=True)
class Skip:
    """What a stage's read of an image says when the image goes no further in this stage, and why."""

    why: str


@dataclass
class ChunkRead(Generic[T]):
    """A chunk of a stage's images, read: the valid ones (their source records and what the stage read for them)
    and the ones that go no further (why)."""

    sources: dict[str, SourceImageRecord] = field(default_factory=dict)
    inputs: dict[str, T] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def read_ahead(results: ResultsStore, taken: RunImages, images: list[str], chunk_size: int,
               read: Callable[[str, SourceImageRecord, A], T | Skip],
               alongside: Callable[[str], A] = lambda image: None) -> Iterator[ChunkRead[T]]:
    """The stage's images read ahead of it and handed over a chunk at a time as their reads end
    (vision/storage/overlap.py: a stalled read holds up its own image only). Per image: its source record and
    `alongside(image)` at once (what the stage reads whatever the record says: one round trip's wait, not two), then
    `read(image, record, what alongside read)` for a valid image (what depends on the record: its picture, at the
    scale it gives). An image the run takes in two batches is read once, for the newest; the other entry is judged
    as it stands (superseded, as a rule)."""
    batch_of = taken.batch_of

    def read_one(image: str) -> tuple[T | Skip, SourceImageRecord | None]:
        record, first = together(lambda: results.read_source_record(image), lambda: alongside(image))
        why = source_judged(record, batch_of[image])
        return (Skip(why) if why else read(image, record, first)), record

    for chunk in as_they_finish(read_one, list(dict.fromkeys(images)), chunk_size):
        out: ChunkRead[T] = ChunkRead()
        for image, (answer, record) in chunk:
            if isinstance(answer, Skip):
                out.skipped[image] = answer.why
            else:
                out.sources[image], out.inputs[image] = record, answer
        yield out


def source_state(results: ResultsStore, image: str, batch: str) -> tuple[str | None, SourceImageRecord | None]:
    """(why this batch's entry for the image goes no further, or None; its source record)."""
    record = results.read_source_record(image)
    return source_judged(record, batch), record


def source_judged(record: SourceImageRecord | None, batch: str) -> str | None:
    """Why a batch's entry for an image with this source record goes no further, or None."""
    if record is None:
        return "not ingested: materialize source_images first"
    if newer := superseded_by(record.batch, batch):
        return f"superseded: re-uploaded in batch {newer}"
    if record.batch is not None and record.batch != batch:
        return f"not ingested for this batch yet (last read for {record.batch}): materialize source_images"
    if not record.is_valid:
        return f"rejected at validation ({record.rejection.code.value}): {record.rejection.message}"
    return None


def judged_from_record(results: ResultsStore, name: str, record_type: type, outcome: Callable, missing: str) -> Callable:
    """A batch check's judge for the images a run did not take: the image's stored record of this stage, once its
    source record says it belongs to the batch and is valid (else why not)."""
    def judge(image: str, batch: str):
        why, _ = source_state(results, image, batch)
        if why:
            return why
        record = results.read(image, name, record_type)
        return outcome(record) if record else missing
    return judge


class BatchMetadata:
    """Each batch's metadata for the stage's materializations, handed to Dagster once, with the MaterializeResult.

    A MaterializeResult of a run over several partitions gives every partition the same metadata, and
    `context.add_asset_metadata(..., partition_key=)` lists every registered partition on each call and copies all
    metadata added so far. Here the batches are checked once against the run's, and the whole set goes into the
    step's metadata in one step (see `dagster_internals.set_partition_metadata`)."""

    def __init__(self, context: dg.AssetExecutionContext):
        self._context = context
        self._by_batch: dict[str, dict] = {}

    def add(self, batch: str, metadata: dict) -> None:
        self._by_batch.setdefault(batch, {}).update(metadata)

    def materialize(self) -> dg.MaterializeResult:
        not_targeted = set(self._by_batch) - set(self._context.partition_keys)
        if not_targeted:
            raise dg.DagsterInvariantViolationError(f"metadata for partitions this run does not target: "
                                                    f"{sorted(not_targeted)[:5]}")
        set_partition_metadata(self._context, self._by_batch)
        return dg.MaterializeResult()


def batch_counts(taken: RunImages, done: set[str], skipped: dict[str, str]) -> dict[str, dict]:
    """Per batch: how many images the run took, finished and skipped (the materialization's metadata)."""
    return {batch: {"images": len(images), "done": sum(i in done for i in images),
                    "skipped": sum(i in skipped for i in images)}
            for batch, images in taken.by_batch.items()}


def reused_in(taken: RunImages, reused: set[str], batch: str) -> int:
    """How many of the batch's images took another image's results for the same bytes (vision/reuse.py)."""
    return sum(image in reused for image in taken.by_batch.get(batch, []))


# A backfill runs adjacent batches together, this many per run (2,048 images at the default batch size): a backfill
# of a million images is ~500 runs the queue works through, each loading the models once, and a failure costs one
# run's batches, not the whole backfill.
BATCHES_PER_BACKFILL_RUN = 8
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(BATCHES_PER_BACKFILL_RUN)


def stage_asset(**kwargs) -> dict:
    """The settings every stage shares: partitioned by upload batch, a few adjacent batches per backfill run."""
    return {"partitions_def": batches, "backfill_policy": BACKFILL_POLICY, "group_name": "models"} | kwargs
