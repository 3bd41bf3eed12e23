"""One registered object -> one `SourceImageRecord`: fetch, validate, normalise, hash, persist.

Rejections are results, not errors: they are recorded and reported. Only a failure to *reach* a store
(network, credentials) raises, so the orchestrator can retry the batch.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any

from ..models.inputs import fit_within
from ..records import RegisteredImage, Rejection, RejectionCode, SourceImageRecord
from ..storage.object_store import ObjectMissing, ObjectStore, ObjectTooLarge
from ..storage.overlap import together
from ..storage.registrations import Registrations
from ..storage.results_store import ResultsStore
from .review import salvage_preview
from .validation import REDUCED_DECODE_SIDE, ValidationLimits, encode_normalized, validate_image, working_copy

# Rejections whose file may still show something: the decoder failed part-way, or the picture is just small.
# (Never for too many pixels: a bomb is not decoded, not even for a preview.)
PREVIEWABLE = {RejectionCode.CORRUPT, RejectionCode.TOO_SMALL}

UNREGISTERED_MESSAGE = (
    "no registration record: this image was not registered by the upload sensor, so the object behind it is unknown"
)


def ingest_image(
    partition_key: str,
    images: ObjectStore,
    results: ResultsStore,
    limits: ValidationLimits,
    preview_side: int | None = None,
    registrations: Registrations | None = None,
    working_side: int = 0,
    batch: str | None = None,
    model_side: int = 0,
    decode_slot: AbstractContextManager | None = None,
) -> SourceImageRecord:
    """`preview_side`: for a rejected file that still partly decodes, write a thumbnail of that long side next to
    the record (`~preview.jpg`), for the reviewer. None: no previews. `registrations`: the run's (default: none
    tagged, so the image's own copy or a search of the sensor's batch files). `working_side`: the long side of the
    normalised copy the model stages read (0: the image's own). `batch`: the upload batch this version was
    registered in (kept on the record: an older batch's run then knows it is superseded). `model_side`: the long side of
    the model input written beside the working copy (`~model-input.jpg`, what the model stages read where it is large
    enough: the detector's side); 0: none. `decode_slot`: held while the image is decoded and encoded (a semaphore
    shared by a run's ingest threads: more images are fetched and written at once than are held decoded)."""
    started = time.perf_counter()
    # No per-image copy of the registration is written: the batch's manifest holds it (a million images were a
    # million more files), and the source record names the object.
    registration = (registrations or Registrations(results)).find(partition_key)
    if registration is None:
        fields = {"object_key": "", "source_uri": "", "size_bytes": 0}
        fields |= _rejection(RejectionCode.UNREGISTERED, UNREGISTERED_MESSAGE)
    else:
        fields = {"object_key": registration.object_key, "source_uri": registration.source_uri}
        fields |= _fetch_and_validate(registration, images, results, limits, preview_side, working_side, model_side,
                                      decode_slot)
    record = SourceImageRecord(
        partition_key=partition_key,
        batch=batch,
        processed_at=datetime.now(UTC),
        seconds=round(time.perf_counter() - started, 4),
        **fields,
    )
    results.write_source_record(record)
    return record


def _fetch_and_validate(
    registration: RegisteredImage,
    images: ObjectStore,
    results: ResultsStore,
    limits: ValidationLimits,
    preview_side: int | None,
    working_side: int,
    model_side: int,
    decode_slot: AbstractContextManager | None,
) -> dict[str, Any]:
    seen = {"etag": registration.etag, "size_bytes": registration.size}
    try:
        version, data = images.get(registration.object_key, max_bytes=limits.max_bytes)
    except ObjectMissing:
        return seen | _rejection(RejectionCode.MISSING_OBJECT, f"{registration.source_uri} no longer exists in the store")
    except ObjectTooLarge as too_large:
        return seen | {"size_bytes": too_large.size} | _rejection(
            RejectionCode.TOO_LARGE,
            f"{too_large.size:,} bytes is over the {too_large.limit:,}-byte limit (not downloaded)",
        )

    fetched = {"etag": version.etag, "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    key = registration.partition_key
    rejected: dict[str, Any] | None = None
    with decode_slot or nullcontext():  # the decoded picture is held only in here: memory follows the slots
        outcome = validate_image(data, limits, working_side, reduced_side=max(model_side, REDUCED_DECODE_SIDE))
        if isinstance(outcome, Rejection):
            rejected = fetched | {"status": "rejected", "rejection": outcome}
            preview = (salvage_preview(data, preview_side, limits.max_pixels)
                       if preview_side and outcome.code in PREVIEWABLE else None)
            preview_jpeg = encode_normalized(preview, quality=80) if preview is not None else None
        else:
            facts, notes = outcome.facts, outcome.warnings
            serves = outcome.original_serves
            if serves:  # the file itself is the working copy: no full decode, no encoding, no upload where copied
                normalized, size, picture = data, (facts.width, facts.height), outcome.rgb  # the reduced decode
            else:
                picture = working_copy(outcome.rgb, working_side)
                normalized, size = encode_normalized(picture), picture.size
            del data, outcome  # the bytes and the decode go now
            # From the one decode: the picture the detector reads, and CLIP and the review pictures too.
            model_input = fit_within(picture, model_side)[0] if model_side else None
            del picture
            model_jpeg = encode_normalized(model_input, quality=90) if model_input is not None else None
    if rejected is not None:
        if preview_jpeg is not None:
            rejected["preview_key"] = results.write_preview(key, preview_jpeg)
        return rejected
    # The two pictures at once (each a round trip); the source record, written after them, says they exist.
    normalized_key, _ = together(lambda: results.write_original_as_working(key, version, images, normalized) if serves
                                 else results.write_normalized(key, normalized),
                                 lambda: results.write_model_input(key, model_jpeg) if model_jpeg is not None else None)
    return fetched | {
        "status": "valid",
        "facts": facts,
        "normalized_key": normalized_key,
        "normalized_width": size[0],
        "normalized_height": size[1],
        "model_input_side": max(model_input.size) if model_input is not None else None,
        "warnings": notes,
    }


def _rejection(code: RejectionCode, message: str) -> dict[str, Any]:
    return {"status": "rejected", "rejection": Rejection(code=code, message=message)}
