"""The image store resource: where uploads are listed and read, and where results are written.

One interface (`ImageStore`), two implementations: `S3ImageStore` (through `S3Connection`, so `endpoint_url`
reaches MinIO, R2 or a local test server) and `LocalImageStore` (a folder, the laptop default).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from ..settings import DEFAULTS
from ..vision.records import RegisteredImage, StoredObject
from ..vision.storage.object_store import FolderObjectStore, ObjectStore, S3ObjectStore
from ..vision.storage.results_store import ResultsStore
from ..vision.storage.s3_events import EventQueue
from ..vision.upload_tracking import UploadFilter
from .s3_connection import S3Connection


class ImageStore(dg.ConfigurableResource):
    prefix: str = DEFAULTS.prefix
    results_prefix: str = DEFAULTS.results_prefix
    image_extensions: list[str] = []  # lower-case with the dot; empty = every object

    _objects: ObjectStore | None = PrivateAttr(default=None)

    def _build_object_store(self) -> ObjectStore:
        raise NotImplementedError

    @property
    def kind(self) -> str:
        """What the store is, for a person: "S3", "the bucket folder"."""
        raise NotImplementedError

    @property
    def where(self) -> str:
        raise NotImplementedError

    @property
    def objects(self) -> ObjectStore:
        if self._objects is None:
            self._objects = self._build_object_store()
        return self._objects

    @property
    def results(self) -> ResultsStore:
        return ResultsStore(self.objects, self.results_prefix)

    @property
    def upload_filter(self) -> UploadFilter:
        return UploadFilter(self.prefix, self.results_prefix, frozenset(self.image_extensions))

    def registration(self, partition_key: str, obj: StoredObject) -> RegisteredImage:
        return RegisteredImage(
            partition_key=partition_key,
            object_key=obj.key,
            source_uri=self.objects.uri(obj.key),
            etag=obj.etag,
            size=obj.size,
            last_modified=obj.last_modified,
        )

    def settled_before(self) -> datetime | None:
        """Objects modified after this instant may still be being written; None when uploads are atomic."""
        return None


class S3ImageStore(ImageStore):
    """Uploads in an S3 bucket. PUTs are atomic, so every listed object is complete. With `events_queue_url`, the
    upload sensor reads the bucket's S3 event notifications from that SQS queue and lists the bucket only every
    `reconcile_seconds` (see vision/storage/s3_events.py)."""

    s3: S3Connection
    bucket: str
    events_queue_url: str | None = None
    reconcile_seconds: int = DEFAULTS.s3_reconcile_seconds
    timeout_seconds: float = DEFAULTS.s3_timeout_seconds
    hedge_seconds: float = DEFAULTS.s3_hedge_seconds

    def _build_object_store(self) -> ObjectStore:
        return S3ObjectStore(self._client("s3"), self.bucket, self.hedge_seconds)

    def _client(self, service: str) -> Any:
        """A boto3 client with the S3 resource's endpoint, region and credentials (one place to configure both S3
        and SQS), in botocore's adaptive retry mode: 5xx and slow-down answers, resets and stalls are retried with
        backoff, and the client slows its own rate while they last, at most `s3.max_attempts` attempts. Not botocore's
        defaults: the standard mode and 60 s timeouts (a stalled request would hold a thread that long)."""
        from botocore.config import Config  # here, beside boto3 (s3_connection.py): only S3 stores need it

        return self.s3.client(service, Config(retries={"mode": "adaptive", "max_attempts": self.s3.max_attempts},
                                              connect_timeout=self.timeout_seconds, read_timeout=self.timeout_seconds,
                                              max_pool_connections=128))

    @property
    def kind(self) -> str:
        return "S3"

    @property
    def where(self) -> str:
        return f"{self.s3.endpoint_url or 'AWS'} (bucket {self.bucket})"

    def event_queue(self) -> EventQueue | None:
        if not self.events_queue_url:
            return None
        return EventQueue(self._client("sqs"), self.events_queue_url, self.bucket)


class LocalImageStore(ImageStore):
    """Uploads in a local folder. A file being copied in is visible before it is complete, so files modified in
    the last `settle_seconds` wait for a later tick."""

    root: str
    settle_seconds: float = DEFAULTS.settle_seconds

    def _build_object_store(self) -> ObjectStore:
        return FolderObjectStore(self.root)

    @property
    def kind(self) -> str:
        return "the bucket folder"

    @property
    def where(self) -> str:
        return self.root

    def settled_before(self) -> datetime | None:
        return datetime.now(UTC) - timedelta(seconds=self.settle_seconds)
