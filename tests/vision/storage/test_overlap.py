"""Store round trips overlapped (vision/storage/overlap.py): a stalled read holds up its own item only, read-ahead is
bounded, a failure hands over what was read before it is raised, and a chunk is recorded only once written."""

import threading
import time

import pytest

from vision_assets.vision.storage.object_store import StoreUnavailable
from vision_assets.vision.storage.overlap import BackgroundWrites, as_they_finish, each_image, together


def test_a_stalled_read_holds_up_its_own_item_not_its_chunk():
    """Item 0 stalls for a second; the others are handed over in chunks meanwhile, and item 0 comes last."""
    release = threading.Event()

    def read(item: int) -> int:
        if item == 0:
            release.wait(5)
        return item * 10

    chunks, started = [], time.perf_counter()
    for chunk in as_they_finish(read, range(12), chunk_size=4, threads=8):
        chunks.append((time.perf_counter() - started, [item for item, _ in chunk]))
        if len(chunks) == 2:
            release.set()
    handed = [item for _, items in chunks for item in items]
    assert sorted(handed) == list(range(12))  # each once
    assert 0 not in chunks[0][1] and 0 not in chunks[1][1]  # the stalled one did not hold up the first chunks
    assert all(len(items) == 4 for _, items in chunks)
    assert chunks[0][0] < 1.0  # the first chunk came before the stall ended


def test_read_ahead_is_at_most_two_chunks_beyond_the_caller():
    """The caller holds one chunk while at most two more are read: three chunks in memory at most."""
    held, most, lock = 0, 0, threading.Lock()

    def read(item: int) -> int:
        nonlocal held, most
        with lock:
            held += 1
            most = max(most, held)
        return item

    for chunk in as_they_finish(read, range(100), chunk_size=5, threads=16):
        time.sleep(0.01)  # the caller computes on its chunk
        with lock:
            held -= len(chunk)
    assert most <= 3 * 5, most


def test_a_failed_read_hands_over_the_reads_that_succeeded_then_raises():
    """Item 3 fails; items already under way finish and are handed over (a retry of the step need not redo them);
    no item is started after the failure."""
    started: list[int] = []

    def read(item: int) -> int:
        started.append(item)
        if item == 3:
            raise StoreUnavailable("injected")
        time.sleep(0.05)
        return item

    handed = []
    with pytest.raises(StoreUnavailable):
        for chunk in as_they_finish(read, range(40), chunk_size=4, threads=8):
            handed += [item for item, _ in chunk]
    assert set(handed) == set(started) - {3}  # everything begun and not failed was handed over
    assert len(started) <= 8 + 4  # the window (two chunks) and no more after the failure


def test_a_chunk_is_recorded_only_after_all_its_writes_and_a_failure_is_raised():
    written, recorded = [], []

    def write(name: str) -> str:
        if name == "bad":
            raise StoreUnavailable("injected")
        time.sleep(0.01)
        written.append(name)
        return name

    with pytest.raises(StoreUnavailable):
        with BackgroundWrites(threads=4, chunks_writing=2) as writes:
            writes.submit([lambda: write("a"), lambda: write("b")], then=lambda answers: recorded.append(answers))
            writes.submit([lambda: write("c"), lambda: write("bad")], then=lambda answers: recorded.append(answers))
            writes.submit([lambda: write("d")], then=lambda answers: recorded.append(answers))
    assert ["a", "b"] in recorded and ["d"] in recorded  # chunks handed over are written, the failure aside
    assert all("c" not in answers for answers in recorded)  # the failed chunk is not recorded
    assert {"a", "b", "c", "d"} <= set(written)


def test_writing_waits_when_the_store_is_slower_than_the_stage():
    """At most `chunks_writing` chunks are under way: `submit` waits for room."""
    under_way, most, lock = 0, 0, threading.Lock()

    def slow() -> None:
        nonlocal under_way, most
        with lock:
            under_way += 1
            most = max(most, under_way)
        time.sleep(0.05)
        with lock:
            under_way -= 1

    with BackgroundWrites(threads=1, chunks_writing=2) as writes:
        for _ in range(6):
            writes.submit([slow])
    assert most == 2


def test_each_image_and_together_keep_order():
    assert each_image(lambda n: n * n, list(range(50))) == [n * n for n in range(50)]
    assert together(lambda: "a", lambda: (time.sleep(0.02), "b")[1], lambda: "c") == ("a", "b", "c")
