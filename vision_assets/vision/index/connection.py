"""Opening Qdrant, and what its failures mean.

Embedded Qdrant (`QdrantClient(path=...)`) admits one client at a time: a second one fails with "already accessed
by another instance". Worse, the client reads every point of every collection into memory *before* it tries the
folder's lock, so retrying the open in a loop would re-read the whole index each time. Everyone who opens the folder
through this module therefore first waits, blocking and cheaply, on a lock file of our own next to Qdrant's, and
only then builds the client. A run that indexes and a search that reads take turns; neither fails for the other.

Failures are sorted into two kinds: `IndexUnavailable` (busy, unreachable, a server's 5xx: waiting heals it, so a
stage retries) and `IndexUnreadable` (the folder is damaged: waiting does not help, a person must rebuild it, and
the message says how).
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

ACCESS_LOCK = "vision-assets.access.lock"  # ours; Qdrant's own is `.lock` in the same folder
BUSY = "already accessed by another instance"
REBUILD_COMMAND = "vision-assets reindex --rebuild"


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
    Path(path).mkdir(parents=True, exist_ok=True)
    with open(Path(path) / ACCESS_LOCK, "a+") as handle:
        deadline = time.monotonic() + wait_seconds
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise IndexUnavailable(
                        f"embedded Qdrant at {path} stayed busy for {wait_seconds:.0f}s (another process is using "
                        "it: a run indexing, a search, or a client left open)"
                    ) from None
                if not told:
                    on_wait(f"embedded Qdrant at {path} is in use by another process (a run indexing, or a search); "
                            f"waiting up to {wait_seconds:.0f}s")
                    told = True
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_embedded(path: str, wait_seconds: float) -> QdrantClient:
    """The client, once the folder is ours (callers hold `embedded_access`). A client opened by someone who does
    not take our lock (a user's own `QdrantClient(path=...)`) is waited out the same way."""
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
        except (sqlite3.DatabaseError, json.JSONDecodeError, pickle.UnpicklingError, EOFError, KeyError, TypeError,
                ValueError) as error:
            raise IndexUnreadable(path, error) from error


@contextmanager
def server_faults(url: str) -> Iterator[None]:
    """A server's connection failures and 5xx/429 answers -> IndexUnavailable; its 4xx stay what they are."""
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
