"""Store round trips overlapped, so that a stage's time follows how many requests it makes, not how slow its slowest
request is.

On S3 each read or write is a round trip: tens of milliseconds, and seconds when the store stalls (a request held
past its timeout, a 5xx waited out with backoff). A stage that read a chunk's inputs, then computed, then wrote the
chunk's outputs, one phase after another, waited at every phase for the chunk's slowest request: under a flaky
store (bench/flaky_store_bench.py) nearly every phase met a stalled request, and a 60-image batch took 9x its clean
time. Here:

- `each_image`: one call on each item, in threads, results in order (one phase, for what is read once per run);
- `together`: an image's independent reads at once;
- `as_they_finish`: a stage's inputs read ahead of it, handed over a chunk at a time in the order their reads end,
  so a stalled read holds up its own image only, which joins a later chunk;
- `BackgroundWrites`: a chunk's outputs written while the stage goes on with the next chunk, and the chunk's
  progress recorded once all of them are written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")
K = TypeVar("K")

# Requests in flight at once per stage: enough that a few stalled ones (held seconds) leave the rest flowing; the
# S3 client keeps as many connections (image_store.py).
STORE_THREADS = 32
# Chunks written at once behind the stage, before it waits for one to finish: what it holds (its outputs, crop
# pixels included) stays bounded when the store is slower than the models.
CHUNKS_WRITING = 3


def each_image(work: Callable[[K], T], items: list[K], threads: int = STORE_THREADS) -> list[T]:
    """`work` on every item (an image, or an image of a batch), `threads` at a time so that store round trips
    overlap, results in the items' order; the first failure (a store fault) is raised."""
    if len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(work, items))


def together(*calls: Callable[[], Any]) -> tuple:
    """Each call at once (an image's reads that do not depend on each other: one round trip's wait, not several);
    their results, in order."""
    return tuple(each_image(lambda call: call(), list(calls), threads=len(calls)))


def as_they_finish(read: Callable[[K], T], items: Iterable[K], chunk_size: int,
                   threads: int = STORE_THREADS) -> Iterator[list[tuple[K, T]]]:
    """`read` on every item in threads, yielding `(item, what it read)` a chunk of `chunk_size` at a time, in the
    order the reads end. At most two chunks are read ahead of the caller, so what it holds (decoded pictures) is at
    most three chunks. When a read fails (a store fault), no read is started any more, the ones under way are let
    finish, and those that succeeded are handed over before the failure is raised: a retry of the step need not do
    them again (a read's own writes, as ingest's, are done either way)."""
    pending = iter(items)
    window = 2 * chunk_size
    pool = ThreadPoolExecutor(max_workers=max(1, min(threads, window)))
    in_flight: dict[Future, K] = {}
    ready: list[tuple[K, T]] = []
    failure: BaseException | None = None

    def top_up() -> None:
        while failure is None and len(in_flight) + len(ready) < window:
            item = next(pending, _END)
            if item is _END:
                return
            in_flight[pool.submit(read, item)] = item

    try:
        top_up()
        while in_flight or ready:
            while in_flight and (len(ready) < chunk_size or failure is not None):
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    item = in_flight.pop(future)
                    if future.exception() is None:
                        ready.append((item, future.result()))
                    elif failure is None:
                        failure = future.exception()
                top_up()
            if failure is not None:
                break
            chunk, ready = ready[:chunk_size], ready[chunk_size:]
            yield chunk
            top_up()
        if failure is not None:
            if ready:
                yield ready
            raise failure
    finally:  # a caller that stopped early: nothing more is started, nothing waited for
        pool.shutdown(wait=False, cancel_futures=True)


_END = object()


class BackgroundWrites:
    """A stage's writes, a chunk at a time, done in threads while the stage goes on. A chunk's `then` (recording it
    as finished) runs after every write of the chunk succeeded, so a chunk recorded is a chunk written. At most
    `CHUNKS_WRITING` chunks are in progress: `submit` waits for the oldest beyond that. Use as a context manager:
    leaving it waits for every chunk and raises the first failure."""

    def __init__(self, threads: int = STORE_THREADS, chunks_writing: int = CHUNKS_WRITING):
        self._threads = threads
        self._chunks = ThreadPoolExecutor(max_workers=chunks_writing, thread_name_prefix="writes")
        self._room = threading.BoundedSemaphore(chunks_writing)
        self._submitted: list[Future] = []

    def submit(self, writes: list[Callable[[], T]], then: Callable[[list[T]], None] | None = None) -> None:
        """Start the chunk's writes; `then(their results)` once all are done. A failure met by an earlier chunk is
        raised here (after this chunk is under way: it is computed, so it is written), so the stage stops at once
        instead of computing on."""
        self._room.acquire()
        try:
            future = self._chunks.submit(self._write_chunk, writes, then)
        except BaseException:
            self._room.release()
            raise
        future.add_done_callback(lambda _: self._room.release())
        self._submitted.append(future)
        self._raise_failure()

    def _write_chunk(self, writes: list[Callable[[], T]], then: Callable[[list[T]], None] | None) -> None:
        answers = each_image(lambda write: write(), writes, self._threads)
        if then is not None:
            then(answers)

    def _raise_failure(self) -> None:
        for future in self._submitted:
            if future.done() and future.exception() is not None:
                raise future.exception()

    def wait(self) -> None:
        """Every chunk written (and recorded); the first failure raised."""
        for future in self._submitted:
            future.result()

    def __enter__(self) -> BackgroundWrites:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            try:
                self.wait()
            finally:
                self._chunks.shutdown(wait=True)
            return
        # The stage failed: the chunks handed over are written and recorded all the same (what a retry of the step
        # then need not redo), their own failures left behind the stage's.
        self._chunks.shutdown(wait=True)
