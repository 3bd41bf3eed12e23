"""Upload batches: the unit of Dagster's bookkeeping (one partition, one run, one check result per stage), while
the image stays the unit of the catalogue (records, points, reviews).

A batch is what one sensor tick registered together, at most `VISION_ASSETS_BATCH_SIZE` images. Its key says when
(`2026-12-05T13:05:41Z-0007`: the tick's time and the batch's number in that tick), so keys sort by registration
time, and its manifest (`<results prefix>~batches/<key>.json`) lists its images and the object versions they were
registered for. An image re-uploaded later belongs to a newer batch: the newer batch holds its current version, and
the older batch's entry is superseded (never processed again, see `supersedes`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from .records import RegisteredImage

KEY_PATTERN = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)-(\d{4,})$")


def batch_key(registered_at: datetime, number: int) -> str:
    """The key of the `number`th batch registered at `registered_at` (seconds; UTC)."""
    return f"{registered_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}-{number:04d}"


def next_number(registered_at: datetime, existing: Sequence[str]) -> int:
    """The first free batch number for that second: two ticks in one second (a tick evaluated again after a crash)
    must never reuse a key, or the second's manifest would replace the first's."""
    prefix = batch_key(registered_at, 0)[:-4]
    taken = [batch_order(key)[1] for key in existing if key.startswith(prefix)]
    return max(taken) + 1 if taken else 0


def batch_order(key: str) -> tuple[str, int]:
    """Registration order: the time, then the number (which may outgrow four digits in a huge migration)."""
    found = KEY_PATTERN.match(key)
    if not found:
        return ("", 0)  # not one of ours: before everything
    return found.group(1), int(found.group(2))


def is_newer(key: str, than: str) -> bool:
    return batch_order(key) > batch_order(than)


class BatchManifest(BaseModel):
    """What a batch holds, written before its partition exists, so no run can start without it."""

    batch: str
    created_at: datetime
    images: list[str]  # image ids, in registration order
    # The object version each image was registered for. Empty for batches made from an instance that had one
    # partition per image (`migrated`): their images find theirs in their own `~registration.json`.
    registrations: list[RegisteredImage] = Field(default_factory=list)
    migrated: bool = False
    removed: list[str] = Field(default_factory=list)  # images deleted since the batch was registered

    def registration(self, image_id: str) -> RegisteredImage | None:
        return next((r for r in self.registrations if r.partition_key == image_id), None)

    def without(self, image_ids: set[str]) -> BatchManifest:
        gone = [i for i in self.images if i in image_ids]
        return self.model_copy(update={
            "images": [i for i in self.images if i not in image_ids],
            "registrations": [r for r in self.registrations if r.partition_key not in image_ids],
            "removed": self.removed + gone,
        })


class BatchIndexed(BaseModel):
    """Which images of a batch its latest `qdrant_index` left indexed: the index audit's ledger, read per batch
    instead of per image."""

    batch: str
    indexed: list[str]


def superseded_by(image_batch: str | None, batch: str) -> str | None:
    """The newer batch an image's current version belongs to, when it is not `batch` (None: `batch` is current, or
    the image's record predates batches)."""
    if image_batch is None or image_batch == batch or not is_newer(image_batch, batch):
        return None
    return image_batch
