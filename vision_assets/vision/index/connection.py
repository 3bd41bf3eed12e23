"""Opening Qdrant, and what its failures mean.

The embedded index (Qdrant Edge, `edge.py`) admits one process at a time: Edge holds each shard's write-ahead log
exclusively, and a second process fails to load it. Everyone who opens the folder through this module therefore
first waits, blocking and cheaply, on a lock file of our own in the folder, and only then opens the shards. A run
that indexes and a search that reads take turns; neither fails for the other. A folder written by qdrant-client's
local mode (the embedded default before Edge) is moved over to Edge the first time it is opened.

Failures are sorted into two kinds: `IndexUnavailable` (busy, unreachable, a server's 5xx: waiting heals it, so a
stage retries) and `IndexUnreadable` (the folder is damaged: waiting does not help, a person must rebuild it, and
the message says how).
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import qdrant_models as models
from .edge import EDGE_FOLDER, EdgeBusy, EdgeClient
from .edge_shards import compact_copy, copy_outside_lock

if TYPE_CHECKING:  # qdrant-client itself where a server or its local mode is used (see qdrant_models.py)
    from qdrant_client import QdrantClient

ACCESS_LOCK = "vision-assets.access.lock"  # ours, in the embedded folder; Edge's own locks are inside each shard
WANTED = "vision-assets.wanted"  # touched by a writer waiting for the folder: a long-lived reader lets go
WRITER_FRESH_SECONDS = 0.5  # a waiting writer touches WANTED every 0.1 s: touched more recently, one is waiting
QUERY_WAIT_SECONDS = 1.0  # how long a search waits for the folder before it answers "busy, try again"
BUSY = "already accessed by another instance"
REBUILD_COMMAND = "vision-assets reindex --rebuild"
LOCAL_MODE_FILES = ("meta.json", "collection", ".lock")  # what qdrant-client's local mode writes in its folder
MIGRATION_PAGE = 1000
# How qdrant-client's local mode fails on a damaged folder (its storage is SQLite rows of pickled points).
LOCAL_MODE_DAMAGE = (sqlite3.DatabaseError, json.JSONDecodeError, pickle.UnpicklingError, EOFError, KeyError, TypeError,
                     ValueError)


class IndexUnavailable(RuntimeError):
    """Qdrant could not be used just now (busy, unreachable, overloaded): worth retrying later."""


class IndexUnreadable(RuntimeError):
    """The embedded folder cannot be read: retrying will not help; it has to be rebuilt."""

    def __init__(self, path: str, error: BaseException):
        super().__init__(
            f"the embedded Qdrant folder {path} cannot be read ({type(error).__name__}: {error}). The index can be "
            f"rebuilt from the results store without running a model: `{REBUILD_COMMAND}` moves the folder aside "
            "and indexes every image that reached the embeddings stage, including those of runs that failed on this "
            "folder (they are not in the index until then)."
        )
        self.path = path


@contextmanager
def embedded_access(path: str, wait_seconds: float, on_wait: Callable[[str], None] = lambda _: None) -> Iterator[None]:
    """Hold the folder's access lock for the block, waiting up to `wait_seconds` for whoever holds it now."""
    handle = _take_folder(path, wait_seconds, on_wait)
    try:
        yield
    finally:
        _give_folder(handle)


def _take_folder(path: str, wait_seconds: float, on_wait: Callable[[str], None], reader: bool = False) -> IO:
    """The folder's access lock, taken.

    Writers first: a writer (a run's index step, the CLI) touches WANTED while it waits, so that a long-lived reader
    holding the folder (the search service, `HeldEmbedded`) lets go; and a reader does not take the folder while a
    writer waits for it, nor touch WANTED itself. Without this the two took turns, and a run indexing under steady
    queries waited most of its lock wait."""
    Path(path).mkdir(parents=True, exist_ok=True)
    handle = open(Path(path) / ACCESS_LOCK, "a+")
    deadline = time.monotonic() + wait_seconds
    told = False
    while True:
        if not (reader and writer_waiting(path)):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return handle
            except BlockingIOError:
                pass
        if time.monotonic() >= deadline:
            handle.close()
            if reader:
                raise IndexUnavailable(f"a run is writing embedded Qdrant at {path}; searches wait for it: try "
                                       "again in a few seconds")
            raise IndexUnavailable(
                f"embedded Qdrant at {path} stayed busy for {wait_seconds:.0f}s (another process is using "
                "it: a run indexing, a search, or a client left open)"
            )
        if not reader:
            (Path(path) / WANTED).touch()
        if not told:
            on_wait(f"embedded Qdrant at {path} is in use by another process (a run indexing, or a search); "
                    f"waiting up to {wait_seconds:.0f}s")
            told = True
        time.sleep(0.1 if not reader else 0.05)


def writer_waiting(path: str) -> bool:
    try:
        return time.time() - (Path(path) / WANTED).stat().st_mtime < WRITER_FRESH_SECONDS
    except FileNotFoundError:
        return False


def _give_folder(handle: IO) -> None:
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


class HeldEmbedded:
    """The embedded index kept open between uses by a long-lived reader (the search service: opening costs most
    of a second at 100,000 points, a query milliseconds), and let go the moment a writer waits for the folder (it
    touches WANTED while it waits, and a watcher here looks five times a second), to be opened again on the next
    use once the writer is done. A use that finds the folder written waits at most `query_wait_seconds`, then
    raises `IndexUnavailable` (the service's 503 with Retry-After). Uses within this process take turns. Nothing is
    built on closing: HNSW is the `build_index_graph` job's."""

    def __init__(self, path: str, wait_seconds: float, look_every_seconds: float = 0.2,
                 query_wait_seconds: float = QUERY_WAIT_SECONDS):
        self.path, self.wait_seconds, self.query_wait_seconds = path, wait_seconds, query_wait_seconds
        self._turn = threading.Lock()
        self._handle: IO | None = None
        self._client: EdgeClient | None = None
        self._opened_at = 0.0
        self.opened = 0  # how many times it was opened (a measure of how often it let go)
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, args=(look_every_seconds,), daemon=True)
        self._watcher.start()

    @contextmanager
    def use(self, on_wait: Callable[[str], None] = lambda _: None) -> Iterator[EdgeClient]:
        # One deadline for the turn in this process and the folder: queries queued behind one that waits for a
        # writer do not add up their waits.
        deadline = time.monotonic() + self.query_wait_seconds
        if not self._turn.acquire(timeout=self.query_wait_seconds):
            raise IndexUnavailable(f"a run is writing embedded Qdrant at {self.path}; searches wait for it: try "
                                   "again in a few seconds")
        try:
            if self._client is not None and self._wanted():
                self._let_go()
            if self._client is None:
                self._handle = _take_folder(self.path, max(0.0, deadline - time.monotonic()), on_wait, reader=True)
                self._opened_at = time.time()
                try:
                    self._client = open_embedded(self.path, self.wait_seconds, tell=on_wait)
                except BaseException:
                    _give_folder(self._handle)
                    self._handle = None
                    raise
                self.opened += 1
            yield self._client
        finally:
            self._turn.release()

    def close(self) -> None:
        self._stop.set()
        with self._turn:
            self._let_go()

    @property
    def holding(self) -> bool:
        return self._client is not None

    def _wanted(self) -> bool:
        try:
            return (Path(self.path) / WANTED).stat().st_mtime >= self._opened_at
        except FileNotFoundError:
            return False

    def _let_go(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._handle is not None:
            _give_folder(self._handle)
            self._handle = None

    def _watch(self, every: float) -> None:
        while not self._stop.wait(every):
            if self._client is not None and self._wanted() and self._turn.acquire(blocking=False):
                try:
                    if self._wanted():
                        self._let_go()
                finally:
                    self._turn.release()


def open_embedded(path: str, wait_seconds: float, tell: Callable[[str], None] = lambda _: None) -> EdgeClient:
    """The embedded index (Qdrant Edge, `edge.py`), once the folder is ours (callers hold `embedded_access`); a
    folder that qdrant-client's local mode wrote is moved over first. A shard held by a process that does not take
    our lock is waited out."""
    migrate_local_mode(path, wait_seconds, tell)
    deadline = time.monotonic() + wait_seconds
    while True:
        client = EdgeClient(Path(path) / EDGE_FOLDER)
        try:
            return client.open_existing()
        except EdgeBusy as error:
            client.close()
            if time.monotonic() >= deadline:
                raise IndexUnavailable(f"embedded Qdrant at {path} is held by a process outside vision-assets: "
                                       f"{error}") from error
            time.sleep(0.5)
        except Exception as error:
            client.close()
            raise IndexUnreadable(path, error) from error


@dataclass(frozen=True)
class Merged:
    """One sealed shard merged by `compact_embedded`."""

    collection: str
    shard: str
    points: int
    copy_seconds: float  # outside the lock
    merge_seconds: float  # outside the lock
    held_seconds: float  # the folder held: recording the compaction, then swapping the merged copy in
    swapped: bool  # False if the merge was dropped (see `ShardSet.finish_compaction`); the next run merges it


def compact_embedded(path: str, wait_seconds: float, tell: Callable[[str], None] = lambda _: None) -> list[Merged]:
    """Merge every sealed shard that needs it (edge_shards.py), holding the folder only to record a compaction and
    to swap the merged copy in, never while copying or merging. Stops early, saying so, when a shard kept changing
    during every copy (a large deletion or re-index going on): the next run takes it up again."""
    def holding(step: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        """`step(client, *args)` with the folder held; what it returned, and the seconds held."""
        started = time.perf_counter()
        with embedded_access(path, wait_seconds, tell):
            client = EdgeClient(Path(path) / EDGE_FOLDER)
            try:
                return step(client, *args), time.perf_counter() - started
            finally:
                client.close()

    merged = []
    while True:
        record, began = holding(EdgeClient.begin_compaction)
        if record is None:
            return merged
        try:
            started = time.perf_counter()
            copies = copy_outside_lock(record)
            copied = time.perf_counter() - started
            if not copies:
                holding(EdgeClient.abandon_compaction, record)
                tell(f"{record.collection}: sealed shard {record.shard or '(the first)'} changed during each of its "
                     "copies (deletions going on); left to merge at the next run")
                return merged
            merge = compact_copy(record)
        except BaseException:
            holding(EdgeClient.abandon_compaction, record)
            raise
        swapped, finished = holding(EdgeClient.finish_compaction, record, merge)
        merged.append(Merged(record.collection, record.shard, record.points, copied, merge.seconds,
                             began + finished, swapped))
        tell(f"{record.collection}: sealed shard {record.shard or '(the first)'} ({record.points:,} points) copied in "
             f"{copied:.1f} s ({copies} cop{'y' if copies == 1 else 'ies'}) and merged into one segment in "
             f"{merge.seconds:.1f} s, outside the lock; the folder was held {began + finished:.2f} s"
             + ("" if swapped else " (but the merge was dropped: its record was taken over meanwhile, or the copy "
                                   "did not hold what the shard holds; the next run merges it again)"))


def migrate_local_mode(path: str, wait_seconds: float, tell: Callable[[str], None]) -> None:
    """Move the points of a folder written by qdrant-client's local mode (the embedded default before Qdrant Edge:
    `meta.json` and `collection/`) into Edge shards, once: collections with their vectors, payloads, payload
    indexes and metadata, counted on both sides; the new shards appear only complete (built aside, then renamed)
    and the old files are kept in `local-mode.migrated-<time>/` for a person to delete."""
    folder = Path(path)
    old_files = [folder / name for name in LOCAL_MODE_FILES if (folder / name).exists()]
    if not old_files:
        return
    if not (folder / EDGE_FOLDER).exists():
        tell(f"{path} holds an index written by qdrant-client's local mode; moving its points to Qdrant Edge (once)")
        staging = folder / f"{EDGE_FOLDER}.migrating"
        shutil.rmtree(staging, ignore_errors=True)
        old = open_local_mode(path, wait_seconds)
        new = EdgeClient(staging)
        try:
            for collection in old.get_collections().collections:
                moved = _copy_collection(old, new, collection.name)
                tell(f"  {collection.name}: {moved:,} points")
        except LOCAL_MODE_DAMAGE as error:
            raise IndexUnreadable(path, error) from error
        finally:
            old.close()
            new.close()
        os.replace(staging, folder / EDGE_FOLDER)
    aside = folder / f"local-mode.migrated-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(exist_ok=True)
    for old_file in old_files:
        os.replace(old_file, aside / old_file.name)
    tell(f"the embedded index is now Qdrant Edge's, in {folder / EDGE_FOLDER}; the old local-mode files are in "
         f"{aside} (delete them once satisfied)")


def _copy_collection(old: QdrantClient, new: EdgeClient, name: str) -> int:
    info = old.get_collection(name)
    new.create_collection(name, info.config.params.vectors, metadata=info.config.metadata)
    for field_name, schema in (info.payload_schema or {}).items():
        new.create_payload_index(name, field_name, schema.data_type)
    moved, offset = 0, None
    while True:
        points, offset = old.scroll(name, limit=MIGRATION_PAGE, offset=offset, with_payload=True, with_vectors=True)
        new.upsert(name, [models.PointStruct(id=p.id, vector=p.vector, payload=p.payload) for p in points])
        moved += len(points)
        if offset is None:
            break
    if new.count(name).count != old.count(name).count:
        raise ValueError(f"collection {name}: {new.count(name).count} points written, {old.count(name).count} read")
    return moved


def open_local_mode(path: str, wait_seconds: float) -> QdrantClient:
    """qdrant-client's local mode on a folder it wrote (for migration). A client opened by someone who does not
    take our lock (a user's own `QdrantClient(path=...)`) is waited out."""
    from qdrant_client import QdrantClient

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return QdrantClient(path=path)
        except RuntimeError as error:
            if BUSY not in str(error):
                raise IndexUnreadable(path, error) from error
            if time.monotonic() >= deadline:
                raise IndexUnavailable(f"embedded Qdrant at {path} is held by a client outside vision-assets: "
                                       f"{error}") from error
            time.sleep(0.5)
        except LOCAL_MODE_DAMAGE as error:
            raise IndexUnreadable(path, error) from error


@contextmanager
def server_faults(url: str) -> Iterator[None]:
    """A server's connection failures and 5xx/429 answers -> IndexUnavailable; its 4xx stay what they are."""
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    try:
        yield
    except (ResponseHandlingException, httpx.TransportError, ConnectionError) as error:
        raise IndexUnavailable(f"Qdrant at {url} unreachable: {error}") from error
    except UnexpectedResponse as error:
        if error.status_code is None or error.status_code >= 500 or error.status_code == 429:
            raise IndexUnavailable(f"Qdrant at {url} answered {error.status_code}: {error.reason_phrase}") from error
        raise


def moved_aside(path: str) -> Path | None:
    """Rename a (damaged) embedded folder out of the way, keeping it for inspection; None if there was none."""
    folder = Path(path)
    if not folder.exists():
        return None
    aside = folder.with_name(f"{folder.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(folder, aside)
    return aside
