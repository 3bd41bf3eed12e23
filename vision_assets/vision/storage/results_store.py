"""Where per-image results live: `<results prefix><image id>/~<name>`, in the same store as the images; and, at the
top of the results prefix, each upload batch's manifest (`~batches/`).

The `~` in file names matters: image ids never contain a segment starting with `~`, so a file of one image can
never collide with the folder of another (`a/~source.json` vs `a/b/~source.json`).
"""

from __future__ import annotations

import io
import json
from typing import TypeVar

import numpy as np
from PIL import Image
from pydantic import BaseModel

from ..batches import BatchIndexed, BatchManifest
from ..images.decoded_jpeg import opened_jpeg
from ..images.working import SIDE_SLACK, WorkingPicture, decode_working, scale_for_long_side
from ..records import LabelsRecord, RefereeRecord, RegisteredImage, SourceImageRecord, StoredObject
from .object_store import ObjectMissing, ObjectStore, S3ObjectStore
from .overlap import each_image, together

Record = TypeVar("Record", bound=BaseModel)

REGISTRATION = "~registration.json"
BATCHES = "~batches/"  # at the top of the results prefix: each upload batch's manifest (vision/batches.py)
LEGACY_REGISTRATIONS = "~registrations/"  # one file per run, written by versions before batches were partitions
SOURCE_RECORD = "~source.json"
NORMALIZED_IMAGE = "~normalized.jpg"
MODEL_INPUT = "~model-input.jpg"  # the picture at the detector's side, written at ingest for the model stages
REJECTED_PREVIEW = "~preview.jpg"  # what still decoded of a rejected file, thumbnail size
DETECTIONS = "~detections.json"
LABELS = "~labels.json"
EMBEDDINGS = "~embeddings.json"
EMBEDDING_VECTORS = "~embeddings.npz"
INDEX = "~index.json"
REVIEW = "~review.json"  # a person's decisions (review_sensor writes it, every later stage honours it)
REFEREE = "~referee.json"  # the referee's opinions on the doubtful crops (read with the labels: `read_labels`)
PER_IMAGE_FILES = frozenset({REGISTRATION, SOURCE_RECORD, NORMALIZED_IMAGE, MODEL_INPUT, REJECTED_PREVIEW, DETECTIONS,
                             LABELS, EMBEDDINGS, EMBEDDING_VECTORS, INDEX, REVIEW, REFEREE})
# At the top of the results prefix, besides the images' folders:
OUTBOX = "~outbox/"  # callback messages waiting for delivery
OUTBOX_QUARANTINE = "~outbox-quarantine/"  # files found in the outbox that are not messages
OUTBOX_DEAD = "~outbox-dead/"  # messages given up on after their last attempt: resent by a person's command
RUNS = "~runs/"  # what a run's step has finished, for a retry of the step to resume from (step_progress.py)
TICKS = "~ticks/"  # the batch keys an upload-sensor tick decided, until the tick is stored (tick_ledger.py)
CATALOG_FILE = "~catalog.parquet"
# The review loop: Label Studio tasks (its source storage reads them), what its target storage writes back, and
# corrections in our own JSON for people without Label Studio (vision/review/).
REVIEW_TASKS = "~review/tasks/"
REVIEW_ANNOTATIONS = "~review/annotations/"
REVIEW_CORRECTIONS = "~review/corrections/"
REVIEW_APPLIED = "~review/applied/"  # verdict files read and applied (moved out of the two folders above)
REVIEW_REFUSED = "~review/refused/"  # verdict files that could not be used (the tick's log says why)
REVIEW_FOLDER = "~review/"
LISTING = "~listing/"  # the upload sensor's notes on a listing pass in progress (vision/listing_pass.py)
SAME_BYTES = "~same-bytes/"  # sha256 -> the image whose results its bytes' later uploads copy (vision/reuse.py)
TOP_LEVEL = (BATCHES, LEGACY_REGISTRATIONS, OUTBOX, OUTBOX_QUARANTINE, OUTBOX_DEAD, RUNS, TICKS, CATALOG_FILE,
             REVIEW_FOLDER, LISTING, SAME_BYTES)


def is_pipeline_file(relative: str) -> bool:
    """Whether a key relative to the results prefix is one the pipeline writes: an image's own files, the
    top-level folders and files, or a write in progress (`.tmp-`). Anything else there was put by someone else."""
    name = relative.rsplit("/", 1)[-1]
    if name.startswith(".tmp-") or relative.startswith(TOP_LEVEL):
        return True
    folder = relative[: -len(name)]
    return name in PER_IMAGE_FILES and "/~" not in f"/{folder}"


class ResultsStore:
    def __init__(self, store: ObjectStore, prefix: str):
        self.store = store
        self.prefix = prefix

    def key(self, partition_key: str, name: str) -> str:
        return f"{self.prefix}{partition_key}/{name}"

    def write(self, partition_key: str, name: str, record: BaseModel) -> None:
        self.store.put(self.key(partition_key, name), record.model_dump_json(indent=1).encode(), "application/json")

    def read(self, partition_key: str, name: str, model: type[Record]) -> Record | None:
        try:
            _, data = self.store.get(self.key(partition_key, name))
        except ObjectMissing:
            return None
        return model.model_validate_json(data)

    def read_labels(self, partition_key: str) -> LabelsRecord | None:
        """The image's labels as people and the index see them: with the referee's opinions on its doubtful crops."""
        labels, referee = together(lambda: self.read(partition_key, LABELS, LabelsRecord),
                                   lambda: self.read(partition_key, REFEREE, RefereeRecord))
        return labels.refereed(referee) if labels else None

    def write_manifests(self, manifests: list[BatchManifest], threads: int = 16) -> None:
        """One file per batch, written concurrently (a tick of 10,000 uploads writes 40 files, not 10,000)."""
        def write(manifest: BatchManifest) -> None:
            self.store.put(self.manifest_key(manifest.batch), manifest.model_dump_json().encode(), "application/json")

        each_image(write, manifests, threads)

    def manifest_key(self, batch: str) -> str:
        return f"{self.prefix}{BATCHES}{batch}.json"

    def read_manifest(self, batch: str) -> BatchManifest | None:
        try:
            _, data = self.store.get(self.manifest_key(batch))
        except ObjectMissing:
            return None
        return BatchManifest.model_validate_json(data)

    def read_manifests(self, batches: list[str], threads: int = 16) -> dict[str, BatchManifest | None]:
        return dict(zip(batches, each_image(self.read_manifest, batches, threads), strict=True))

    def write_batch_indexed(self, record: BatchIndexed) -> None:
        self.store.put(f"{self.prefix}{BATCHES}{record.batch}.indexed.json", record.model_dump_json().encode(),
                       "application/json")

    def read_batch_indexed(self, batch: str) -> BatchIndexed | None:
        try:
            _, data = self.store.get(f"{self.prefix}{BATCHES}{batch}.indexed.json")
        except ObjectMissing:
            return None
        return BatchIndexed.model_validate_json(data)

    def write_registration(self, registration: RegisteredImage) -> None:
        self.write(registration.partition_key, REGISTRATION, registration)

    def read_registration(self, partition_key: str) -> RegisteredImage | None:
        return self.read(partition_key, REGISTRATION, RegisteredImage)

    def write_source_record(self, record: SourceImageRecord) -> None:
        self.write(record.partition_key, SOURCE_RECORD, record)

    def read_source_record(self, partition_key: str) -> SourceImageRecord | None:
        return self.read(partition_key, SOURCE_RECORD, SourceImageRecord)

    def _write_jpeg(self, partition_key: str, name: str, jpeg: bytes) -> str:
        key = self.key(partition_key, name)
        self.store.put(key, jpeg, "image/jpeg")
        return key

    def write_normalized(self, partition_key: str, jpeg: bytes) -> str:
        return self._write_jpeg(partition_key, NORMALIZED_IMAGE, jpeg)

    def write_original_as_working(self, partition_key: str, original: StoredObject, originals: ObjectStore,
                                  data: bytes) -> str:
        """An upload that serves as its own working copy (`data`, its bytes, version `original`): copied within the
        store where the store can (S3 copies server side, a folder links), else written like any working copy."""
        key = self.key(partition_key, NORMALIZED_IMAGE)
        if originals is self.store and self.store.copy_if_unchanged(original, key, "image/jpeg"):
            return key
        return self.write_normalized(partition_key, data)

    def write_preview(self, partition_key: str, jpeg: bytes) -> str:
        return self._write_jpeg(partition_key, REJECTED_PREVIEW, jpeg)

    def read_normalized(self, partition_key: str) -> Image.Image:
        _, data = self.store.get(self.key(partition_key, NORMALIZED_IMAGE))
        return _decoded(data)

    def write_model_input(self, partition_key: str, jpeg: bytes) -> str:
        return self._write_jpeg(partition_key, MODEL_INPUT, jpeg)

    def read_working(self, partition_key: str, scale: float = 1.0,
                     source: SourceImageRecord | None = None) -> WorkingPicture:
        """The working copy at `scale` of its size or a little more (see vision/images/working.py): the small model
        input ingest wrote where it is large enough (its record says), else the working copy, decoded reduced."""
        size, side = (source.working_size, source.model_input_side) if source else (None, None)
        if size and side and side / max(size) >= scale * SIDE_SLACK:
            _, data = self.store.get(self.key(partition_key, MODEL_INPUT))
            return WorkingPicture(opened_jpeg(data), *size)  # sent to a model service as these bytes
        _, data = self.store.get(self.key(partition_key, NORMALIZED_IMAGE))
        return decode_working(data, scale)

    def read_thumbnail_source(self, partition_key: str, side: int) -> WorkingPicture:
        """The working copy decoded just large enough for a thumbnail of `side` pixels (a 12 MP photo at 1/8)."""
        _, data = self.store.get(self.key(partition_key, NORMALIZED_IMAGE))
        with Image.open(io.BytesIO(data)) as header:
            scale = scale_for_long_side(header.size, side)
        return decode_working(data, scale)

    def read_image(self, key: str) -> Image.Image | None:
        try:
            _, data = self.store.get(key)
        except ObjectMissing:
            return None
        return _decoded(data)

    def review_task_key(self, partition_key: str) -> str:
        return f"{self.prefix}{REVIEW_TASKS}{partition_key}.json"

    def write_review_task(self, partition_key: str, task: dict) -> None:
        self.store.put(self.review_task_key(partition_key), json.dumps(task, indent=1).encode(), "application/json")

    def remove_review_task(self, partition_key: str) -> None:
        """An image that needs no review (any more) has no task; a task Label Studio imported stays there. Deleting
        a task that was never written is a no-op in both stores."""
        self.store.delete(self.review_task_key(partition_key))

    def reviewer_uri(self, partition_key: str, name: str) -> str:
        """Where a review tool finds a file of ours: Label Studio's S3 storage reads `s3://bucket/key` with the key
        as it is (it does not decode percent-escapes, which `ObjectStore.uri` writes)."""
        key = self.key(partition_key, name)
        return f"s3://{self.store.bucket}/{key}" if isinstance(self.store, S3ObjectStore) else self.store.uri(key)

    def write_arrays(self, partition_key: str, name: str, **arrays: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        self.store.put(self.key(partition_key, name), buffer.getvalue(), "application/octet-stream")

    def read_arrays(self, partition_key: str, name: str) -> dict[str, np.ndarray] | None:
        try:
            _, data = self.store.get(self.key(partition_key, name))
        except ObjectMissing:
            return None
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return {key: arrays[key] for key in arrays.files}


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
