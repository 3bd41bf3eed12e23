"""Object stores: the one interface the pipeline reads images from and writes results to.

Two implementations: S3 (any S3-compatible endpoint, through a boto3 client) and a local folder, the
zero-setup default. Keys are always '/'-separated and relative to the store's root (bucket or folder).
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, quote_from_bytes

from botocore.exceptions import BotoCoreError, ClientError

from ..records import StoredObject

LIST_PAGE_SIZE = 1000  # S3's own maximum for ListObjectsV2
T = TypeVar("T")


class ObjectMissing(KeyError):
    """The object does not exist (any more)."""


class StoreUnavailable(RuntimeError):
    """The store could not be reached or refused the request: worth retrying the batch, never a verdict on an image."""


class ObjectTooLarge(ValueError):
    def __init__(self, key: str, size: int, limit: int):
        super().__init__(f"{key}: {size} bytes is over the {limit}-byte limit")
        self.size = size
        self.limit = limit


@dataclass(frozen=True)
class ListedSlice:
    """Up to `max_objects` objects in key order, from just after a key: one slice of a listing resumed across calls
    (a sensor tick lists a bounded slice and keeps the last key in its cursor)."""

    objects: list[StoredObject]
    truncated: bool  # more objects follow the last one listed

    @property
    def last_key(self) -> str | None:
        return self.objects[-1].key if self.objects else None


class ObjectStore(ABC):
    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every object under `prefix`, following pagination to the end. Order is unspecified."""

    @abstractmethod
    def list_slice(self, prefix: str, start_after: str, max_objects: int) -> ListedSlice:
        """At most `max_objects` objects under `prefix` whose keys sort after `start_after` (S3's order: by UTF-8
        bytes, which is Python's order of the keys as strings), in that order."""

    @abstractmethod
    def head(self, key: str) -> StoredObject:
        """Size, etag and last-modified of one object; `ObjectMissing` if it is gone."""

    @abstractmethod
    def get(self, key: str, max_bytes: int | None = None) -> tuple[StoredObject, bytes]:
        """The object's bytes and the version they belong to. Refuses (`ObjectTooLarge`) before reading
        the body when the object is bigger than `max_bytes`."""

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    def copy_if_unchanged(self, source: StoredObject, key: str, content_type: str = "application/octet-stream"
                          ) -> bool:
        """`source` copied to `key` without its bytes passing through this process, if the object is still the
        version `source` describes. False where it changed or is gone, or the store cannot copy: the caller writes
        the bytes it holds instead."""
        return False

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def uri(self, key: str) -> str: ...


def _strip_etag(etag: str) -> str:
    return etag.strip('"')


_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


@contextmanager
def s3_errors(where: str):
    """boto3's many failure types -> ObjectMissing (a fact about an object) or StoreUnavailable (retry later)."""
    try:
        yield
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in _MISSING_CODES:
            raise ObjectMissing(where) from error
        raise StoreUnavailable(f"S3 refused {where}: {error}") from error
    except BotoCoreError as error:
        raise StoreUnavailable(f"S3 store unreachable ({where}): {error}") from error


# Retries of our own, after botocore's: its retry quota, a circuit breaker, stops retrying for a client once a
# sustained error rate has used it up (a few dozen failed attempts), and it never retries a body cut off mid-read.
# With a third of the requests failing (bench/flaky_store_bench.py), 8 keep a stage's few hundred requests from
# failing it; past these, the stage retries and resumes (assets/stage.py).
OWN_RETRIES = 8
OWN_RETRY_BASE_SECONDS, OWN_RETRY_CAP_SECONDS = 0.2, 2.0


# A small request (a record, a progress note, a HEAD, a DELETE, the first byte of a GET) unanswered well past the
# store's usual time is asked again alongside, and the first answer is taken ("hedged requests", The Tail at Scale,
# Dean and Barroso). One request in ten held for seconds made every stage wait for its slowest request
# (bench/flaky_store_bench.py). "Well past" is `hedge_seconds` or HEDGE_MEDIANS times the median of the recent
# answers, whichever is longer: a store that is slow for every request (a busy MinIO) is not sent everything twice.
# A request is hedged once at most.
HEDGED_PUT_BYTES = 256 * 1024  # larger uploads are not sent twice: their time is the transfer's, not a stall
HEDGE_MEDIANS = 4
RECENT_ANSWERS = 256  # answer times the median is taken over


class S3ObjectStore(ObjectStore):
    def __init__(self, client: Any, bucket: str, hedge_seconds: float = 0.0):
        self.client = client
        self.bucket = bucket
        self.hedge_seconds = hedge_seconds
        # Threads for the hedged requests' attempts (created as needed): the caller waits on them.
        self._attempts = ThreadPoolExecutor(max_workers=128, thread_name_prefix="s3-hedge") if hedge_seconds else None
        self._answer_times: deque[float] = deque(maxlen=RECENT_ANSWERS)
        self._answers, self._answers_lock = 0, threading.Lock()
        self._hedge_after = hedge_seconds
        self.requests_hedged = 0

    def _retried(self, where: str, action: Callable[[], T], hedge: bool = True) -> T:
        """The action (hedged, if `hedge`), its faults sorted by `s3_errors`, a store fault tried again after a
        jittered wait that doubles (full jitter: concurrent requests do not come back together)."""
        for attempt in range(OWN_RETRIES + 1):
            try:
                with s3_errors(where):
                    return self._hedged(action) if hedge else action()
            except StoreUnavailable:
                if attempt == OWN_RETRIES:
                    raise
                time.sleep(random.uniform(0, min(OWN_RETRY_CAP_SECONDS, OWN_RETRY_BASE_SECONDS * 2**attempt)))
        raise AssertionError("unreachable")

    def _hedged(self, action: Callable[[], T]) -> T:
        """The action; if it has not answered in time (see HEDGE_MEDIANS), the same action again alongside: the
        first answer wins, and a failure counts only once both have failed (the first one's is raised)."""
        if self._attempts is None:
            return action()
        started = time.monotonic()
        first = self._attempts.submit(action)
        try:
            answer = first.result(timeout=self._hedge_after)
        except FutureTimeout:
            answer = self._first_answer([first, self._attempts.submit(action)])
        self._answered(time.monotonic() - started)
        return answer

    def _first_answer(self, attempts: list[Future]) -> T:
        self.requests_hedged += 1
        first, pending = attempts[0], list(attempts)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                if future.exception() is None:
                    for other in attempts:
                        if other is not future:
                            other.add_done_callback(_close_unused_body)
                    return future.result()
            pending = [future for future in pending if future not in done]
        return first.result()  # both failed: the first's error

    def _answered(self, seconds: float) -> None:
        """An answer's time, for the median the hedging delay follows (taken every 32 answers: cheap)."""
        with self._answers_lock:
            times = self._answer_times
            times.append(seconds)
            self._answers += 1
            if self._answers % 32 == 0:
                self._hedge_after = max(self.hedge_seconds, HEDGE_MEDIANS * statistics.median(times))

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE_SIZE})
        with s3_errors(f"listing s3://{self.bucket}/{prefix}"):
            for page in pages:
                for item in page.get("Contents", []):
                    yield self._listed(item)

    def list_slice(self, prefix: str, start_after: str, max_objects: int) -> ListedSlice:
        objects: list[StoredObject] = []
        request = {"Bucket": self.bucket, "Prefix": prefix, **({"StartAfter": start_after} if start_after else {})}
        where = f"listing s3://{self.bucket}/{prefix} after {start_after!r}"
        while True:
            asked = {**request, "MaxKeys": min(LIST_PAGE_SIZE, max_objects - len(objects))}
            page = self._retried(where, lambda asked=asked: self.client.list_objects_v2(**asked))
            objects += [self._listed(item) for item in page.get("Contents", [])]
            truncated = bool(page.get("IsTruncated"))
            if not truncated or len(objects) >= max_objects:
                return ListedSlice(objects, truncated)
            request["ContinuationToken"] = page["NextContinuationToken"]

    @staticmethod
    def _listed(item: dict) -> StoredObject:
        return StoredObject(key=item["Key"], size=item["Size"], etag=_strip_etag(item["ETag"]),
                            last_modified=item["LastModified"])

    def head(self, key: str) -> StoredObject:
        return self._retried(self.uri(key), lambda: self._described(
            key, self.client.head_object(Bucket=self.bucket, Key=key)))

    def get(self, key: str, max_bytes: int | None = None) -> tuple[StoredObject, bytes]:
        def read() -> tuple[StoredObject, bytes]:
            # Hedged up to the answer's headers (a stall before the first byte), not the transfer of the body.
            response = self._hedged(lambda: self.client.get_object(Bucket=self.bucket, Key=key))
            described = self._described(key, response)
            body = response["Body"]
            try:
                if max_bytes is not None and described.size > max_bytes:
                    raise ObjectTooLarge(key, described.size, max_bytes)
                return described, body.read()
            finally:
                body.close()

        return self._retried(self.uri(key), read, hedge=False)

    @staticmethod
    def _described(key: str, response: dict) -> StoredObject:
        return StoredObject(
            key=key,
            size=response["ContentLength"],
            etag=_strip_etag(response["ETag"]),
            last_modified=response["LastModified"],
        )

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._retried(self.uri(key), lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                                                    ContentType=content_type),
                      hedge=len(data) <= HEDGED_PUT_BYTES)

    def copy_if_unchanged(self, source: StoredObject, key: str, content_type: str = "application/octet-stream"
                          ) -> bool:
        """A server-side copy (CopyObject), conditional on the source's etag: the 3.4 MB of a 12 MP photo are not
        uploaded again. A store that ignores the condition is caught by the copy's own etag (a copy of a multipart
        object may have another etag: then the caller writes the bytes, as it would without a copy)."""
        def copy() -> bool:
            try:
                answer = self.client.copy_object(Bucket=self.bucket, Key=key, CopySourceIfMatch=f'"{source.etag}"',
                                                 CopySource={"Bucket": self.bucket, "Key": source.key},
                                                 MetadataDirective="REPLACE", ContentType=content_type)
            except ClientError as error:
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if status >= 500 or status in (408, 429) or error.response.get("Error", {}).get("Code") == "SlowDown":
                    raise  # the store's trouble, not the copy's: tried again like any request
                return False  # changed (412), gone, or copying not allowed here: the caller writes the bytes
            return _strip_etag(answer.get("CopyObjectResult", {}).get("ETag", "")) == source.etag

        if self._retried(self.uri(key), copy, hedge=False):
            return True
        self.delete(key)  # whatever the copy left there is not the version asked for
        return False

    def delete(self, key: str) -> None:
        self._retried(self.uri(key), lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def uri(self, key: str) -> str:
        # Percent-encoded, so `#`, `?`, `%` and spaces in a key survive any URI parser (S3 keys are UTF-8).
        return f"s3://{self.bucket}/{uri_path(key)}"


def _close_unused_body(attempt: Future) -> None:
    """A hedged GET's losing answer: its body is closed, so its connection goes back to the pool instead of waiting
    for the garbage collector."""
    if attempt.exception() is None and isinstance(answer := attempt.result(), dict) and "Body" in answer:
        answer["Body"].close()


def uri_path(key: str | bytes) -> str:
    """A key as a URI path that every parser reads back as exactly that key: percent-encoded (UTF-8, or a file
    name's own bytes), with `.` and `..` segments encoded too (`%2E%2E`), so that resolving dot segments (RFC 3986
    5.2.4: `urljoin`, browsers, HTTP clients) cannot turn `a/../b.jpg` into `b.jpg`, another object."""
    quoted = quote_from_bytes(key, safe="/") if isinstance(key, bytes) else quote(key, safe="/")
    return "/".join(segment.replace(".", "%2E") if segment in (".", "..") else segment
                    for segment in quoted.split("/"))


class FolderObjectStore(ObjectStore):
    """A local folder as a bucket. The etag is size + modification time (nanoseconds), which changes whenever
    the file is rewritten, without hashing every file on every listing."""

    # Folders resolved and checked once: a run asks for ~40 keys per image (records, pictures) in a few folders, and
    # resolving each whole key walks every component with lstat in Python (in a run's threads 0.18 ms a key, 7 ms of
    # CPU a photo; 38 us against 5 alone: bench/run_overhead_bench.py). A folder replaced by a symlink after its first
    # use is not seen again: this store is one machine's own folder.
    FOLDERS_KEPT = 10_000

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self._folders: dict[str, Path] = {}

    def _path(self, key: str) -> Path:
        """The file behind `key`; refused where it is outside the store folder (`..` segments, a symlink out)."""
        folder, _, name = key.rpartition("/")
        if name in ("", ".", "..") or "\x00" in key:
            return self._resolved(key, key)
        directory = self._folders.get(folder)
        if directory is None:
            directory = self._resolved(folder, key) if folder else self.root
            if len(self._folders) >= self.FOLDERS_KEPT:
                self._folders.clear()
            self._folders[folder] = directory
        path = directory / name
        return self._resolved(key, key) if path.is_symlink() else path

    def _resolved(self, relative: str, key: str) -> Path:
        path = (self.root / relative).resolve()
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"object key {key!r} points outside the store folder")
        return path

    def _describe(self, key: str, stat: os.stat_result) -> StoredObject:
        return StoredObject(
            key=key,
            size=stat.st_size,
            etag=f"{stat.st_size:x}-{stat.st_mtime_ns:x}",
            last_modified=datetime.fromtimestamp(stat.st_mtime, tz=UTC),
        )

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        # Walk only below the prefix's folder: listing `results/a/` must not visit every image in the bucket.
        start = self._path(prefix.rpartition("/")[0]) if "/" in prefix else self.root
        if not start.is_dir():
            return
        for directory, subdirs, files in os.walk(start):
            subdirs.sort()
            relative_dir = Path(directory).relative_to(self.root).as_posix()
            for name in sorted(files):
                key = name if relative_dir == "." else f"{relative_dir}/{name}"
                if not key.startswith(prefix):
                    continue
                try:
                    stat = os.stat(os.path.join(directory, name))
                except FileNotFoundError:  # removed while we walked
                    continue
                yield self._describe(key, stat)

    def list_slice(self, prefix: str, start_after: str, max_objects: int) -> ListedSlice:
        found = list(islice(self._in_key_order(self.root, "", prefix, start_after), max_objects + 1))
        return ListedSlice(found[:max_objects], truncated=len(found) > max_objects)

    def _in_key_order(self, directory: Path, folder_key: str, prefix: str, start_after: str) -> Iterator[StoredObject]:
        """The files below `directory` (whose keys start with `folder_key`) in key order, skipping whole folders
        that sort before `start_after` or outside `prefix`. A folder's keys all start with `name/`, so a folder
        sorts among its siblings as `name/`."""
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        # Like `list` (os.walk), folders reached through a symbolic link are not walked.
        children = sorted((folder_key + entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""), entry)
                          for entry in entries if entry.is_dir(follow_symlinks=False) or not entry.is_dir())
        for key, entry in children:
            if key.endswith("/"):
                before_start = key <= start_after and not start_after.startswith(key)
                if before_start or not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                yield from self._in_key_order(Path(entry.path), key, prefix, start_after)
            elif key > start_after and key.startswith(prefix):
                try:
                    yield self._describe(key, entry.stat(follow_symlinks=True))
                except FileNotFoundError:  # removed while we walked
                    continue

    def head(self, key: str) -> StoredObject:
        try:
            return self._describe(key, self._path(key).stat())
        except (FileNotFoundError, NotADirectoryError) as error:
            raise ObjectMissing(key) from error

    def get(self, key: str, max_bytes: int | None = None) -> tuple[StoredObject, bytes]:
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                described = self._describe(key, os.fstat(handle.fileno()))
                if max_bytes is not None and described.size > max_bytes:
                    raise ObjectTooLarge(key, described.size, max_bytes)
                return described, handle.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as error:
            raise ObjectMissing(key) from error
        except OSError as error:
            raise StoreUnavailable(f"cannot read {path}: {error}") from error

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so a reader (or the upload sensor) never sees a half-written file.
            with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as handle:
                handle.write(data)
            os.replace(handle.name, path)
        except OSError as error:
            raise StoreUnavailable(f"cannot write {path}: {error}") from error

    def copy_if_unchanged(self, source: StoredObject, key: str, content_type: str = "application/octet-stream"
                          ) -> bool:
        """A hard link to the source's file, kept only if the file is still the version `source` describes. Our
        writes replace files (write, then rename), so the link keeps the bytes it was made with when the upload is
        replaced or deleted; a program that rewrote the upload in place would change both (and the upload sensor
        would register it again)."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            link = path.parent / f".tmp-link-{uuid.uuid4().hex}"
            os.link(self._path(source.key), link)
        except OSError:  # gone, another file system, or no hard links here: the caller writes the bytes
            return False
        try:
            if self._describe(key, link.stat()).etag != source.etag:
                return False
            os.replace(link, path)
            return True
        finally:
            link.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def uri(self, key: str) -> str:
        # The key as it is, not the resolved path (which would fold `a/../b` and symlinks), percent-encoded from
        # its file-system bytes, so even a name that is not UTF-8 round-trips.
        return "file://" + quote_from_bytes(os.fsencode(self.root), safe="/") + "/" + uri_path(os.fsencode(key))
