"""No model is paid twice for the same bytes. An image whose content (sha256) a stage already processed, under
another image id, with the same models and settings, takes that image's results instead of running a model: its
detections, vectors, labels and referee opinions are copied, each stage checking its own version.

- The detections stage finds the donor: `<results>~same-bytes/<sha256>.json` names the last image it detected with
  those bytes (one small GET per image; the donor must still hold those bytes, its source record says). It copies the
  donor's detections when they were made by the same detector and settings, and records `reused_from`.
- Every later stage copies the donor's record of that stage only for an image whose detections were copied from it
  (the same boxes), and only when the donor's record carries this stage's version (`version` in each record: the
  models' identities and the settings that shape the result). Anything else is computed as usual.
An image that is only a near duplicate (the same picture re-encoded: another sha256) is processed as usual."""

from __future__ import annotations

import hashlib
from typing import TypeVar

from pydantic import BaseModel

from .records import SourceImageRecord
from .storage.object_store import ObjectMissing
from .storage.results_store import SAME_BYTES, ResultsStore

Record = TypeVar("Record", bound=BaseModel)


def version_of(*parts: object) -> str:
    """A stage's version from what shapes its results (model identities, settings), short and comparable."""
    return hashlib.sha256("|".join(str(part) for part in parts).encode()).hexdigest()[:16]


def same_bytes_key(results: ResultsStore, sha256: str) -> str:
    return f"{results.prefix}{SAME_BYTES}{sha256}.json"


def remember_bytes(results: ResultsStore, source: SourceImageRecord) -> None:
    """Name this image as the one whose results later uploads of the same bytes copy."""
    if source.sha256:
        results.store.put(same_bytes_key(results, source.sha256), source.partition_key.encode(), "text/plain")


def donor_for(results: ResultsStore, source: SourceImageRecord) -> str | None:
    """Another image already detected with this image's bytes, and still holding them; None if there is none."""
    if not source.sha256:
        return None
    try:
        _, data = results.store.get(same_bytes_key(results, source.sha256))
    except ObjectMissing:
        return None
    donor = data.decode()
    if donor == source.partition_key:
        return None
    found = results.read_source_record(donor)
    return donor if found is not None and found.is_valid and found.sha256 == source.sha256 else None


def reusable(results: ResultsStore, donor: str | None, name: str, record_type: type[Record], version: str,
             image: str) -> Record | None:
    """The donor's record of a stage, as this image's (its id in it), when it carries this stage's version."""
    if donor is None:
        return None
    found = results.read(donor, name, record_type)
    if found is None or getattr(found, "version", None) != version:
        return None
    return found.model_copy(update={"partition_key": image, "device_seconds": {}, "reused_from": donor})
