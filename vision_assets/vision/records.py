"""Typed records that cross module boundaries and are persisted in the results store."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel, Field


class StoredObject(BaseModel):
    """One object in an image store, as a listing or a HEAD request reports it."""

    key: str
    size: int
    etag: str
    last_modified: datetime


class RegisteredImage(BaseModel):
    """The stored mapping from a partition key back to the object version it was registered for.

    The sensor writes it before it adds the partition; assets read it instead of guessing the object key
    from the partition key (which is sanitised and may carry a hash suffix).
    """

    partition_key: str
    object_key: str
    source_uri: str
    etag: str
    size: int
    last_modified: datetime


class RejectionCode(str, Enum):
    EMPTY = "empty"
    TOO_LARGE = "too_large"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_SMALL = "too_small"
    CORRUPT = "corrupt"
    MISSING_OBJECT = "missing_object"
    UNREGISTERED = "unregistered"


class Rejection(BaseModel):
    code: RejectionCode
    message: str


class ImageFacts(BaseModel):
    """What validation learnt about a decodable image."""

    format: str
    width: int  # after EXIF orientation
    height: int
    original_mode: str
    frames: int = 1
    exif_orientation: int | None = None
    icc_profile: bool = False
    phash: str


class SourceImageRecord(BaseModel):
    """Per-image outcome of `source_images`, persisted as `<results>/<partition>/source.json`."""

    partition_key: str
    object_key: str
    source_uri: str
    etag: str | None = None
    size_bytes: int
    sha256: str | None = None
    status: str  # "valid" | "rejected"
    rejection: Rejection | None = None
    facts: ImageFacts | None = None
    normalized_key: str | None = None
    warnings: list[str] = Field(default_factory=list)
    processed_at: datetime
    seconds: float

    @property
    def is_valid(self) -> bool:
        return self.status == "valid"
