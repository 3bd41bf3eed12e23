from datetime import UTC, datetime, timedelta

import pytest

from vision_assets.vision import upload_tracking
from vision_assets.vision.listing_pass import resume_after
from vision_assets.vision.partition_keys import partition_key_for
from vision_assets.vision.records import StoredObject
from vision_assets.vision.storage.object_store import ListedSlice
from vision_assets.vision.upload_tracking import (
    Skip,
    UploadCursor,
    UploadFilter,
    contiguous_batches,
    plan_tick,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
FILTER = UploadFilter(prefix="in/", results_prefix="in/results/", extensions=frozenset({".jpg", ".png"}))


def obj(key, seconds=0, etag="e1"):
    return StoredObject(key=key, size=10, etag=etag, last_modified=T0 + timedelta(seconds=seconds))


class Bucket:
    """Plays the instance's registered partitions across ticks, as the sensor does."""

    def __init__(self):
        self.registered: list[str] = []
        self.materialized: set[str] = set()
        self.cursor = UploadCursor()

    def tick(self, objects, max_uploads=1000, lookback=timedelta(minutes=15), settled_before=None):
        plan = plan_tick(
            objects,
            set(self.registered),
            UploadCursor.parse(self.cursor.dump()),  # through JSON, as the cursor is stored
            materialized=lambda: self.materialized,
            upload_filter=FILTER,
            partition_key_of=partition_key_for,
            lookback=lookback,
            max_uploads=max_uploads,
            settled_before=settled_before,
        )
        self.registered += plan.new_partition_keys
        self.materialized |= {u.partition_key for u in plan.uploads}  # as if every run succeeded
        self.cursor = plan.cursor
        return plan


def keys(plan):
    return [u.obj.key for u in plan.uploads]


def test_filter():
    assert FILTER.accepts("in/a.JPG")
    assert not FILTER.accepts("in/a.txt")
    assert not FILTER.accepts("out/a.jpg")
    assert not FILTER.accepts("in/results/x/~normalized.jpg")
    assert not FILTER.accepts("in/dir/")
    assert not FILTER.accepts("in/.tmp-123.jpg")
    assert UploadFilter().accepts("anything.at.all")


def test_the_default_extensions_take_camera_heif_files():
    from vision_assets.settings import DEFAULTS

    cameras = UploadFilter(extensions=DEFAULTS.image_extensions)
    for name in ("IMG_0001.HIF", "DSC01234.hif", "IMG_4321.HEIC", "photo.heif", "scan.JPG"):
        assert cameras.accepts(name), name
    assert not cameras.accepts("clip.MP4") and not cameras.accepts("IMG_0001.CR3")  # video and raw are not images here


def test_every_object_not_taken_is_counted_by_its_real_reason():
    undecodable = b"in/caf\xe9.jpg".decode("utf-8", "surrogateescape")  # a Latin-1 file name on a UTF-8 system
    plan = Bucket().tick([
        obj("in/a.jpg"),
        obj(undecodable),
        obj("in/...jpg"), obj("in/.DS_Store"),
        obj("in/results/evil.jpg"),  # a user's file under the results prefix: counted, never processed
        obj("in/results/a.jpg/~normalized.jpg"), obj("in/results/~outbox/x.json"),  # ours: silent
        obj("in/results/~registrations/1-a.json"), obj("in/results/~catalog.parquet"),
        obj("in/results/a.jpg/~evil.jpg"), obj("in/results/~planted/x.jpg"),  # not ours, though named with `~`
        obj("in/results/a.jpg/.tmp-abc"),
        obj("in/notes.txt"), obj("in/photo.jpg "),  # a trailing space is not an extension
        obj("in/bell\x07.jpg"),
        obj("elsewhere/b.jpg"),
        obj("in/dir/"),
    ])
    assert sorted(keys(plan)) == ["in/a.jpg", "in/bell\x07.jpg", "in/photo.jpg "]
    assert plan.skipped == {Skip.UNREPRESENTABLE: 1, Skip.HIDDEN: 2, Skip.RESULTS: 3, Skip.EXTENSION: 1,
                            Skip.OUTSIDE_PREFIX: 1, Skip.FOLDER: 1}
    assert plan.skipped_examples[Skip.UNREPRESENTABLE] == ["b'in/caf\\xe9.jpg'"]  # named, escaped
    assert plan.skipped_examples[Skip.RESULTS] == ["in/results/evil.jpg", "in/results/a.jpg/~evil.jpg",
                                                   "in/results/~planted/x.jpg"]


def test_new_objects_are_taken_once():
    bucket = Bucket()
    first = bucket.tick([obj("in/a.jpg"), obj("in/b.jpg", 1), obj("in/notes.txt"), obj("in/results/a/~source.json")])
    assert keys(first) == ["in/a.jpg", "in/b.jpg"]
    assert first.skipped == {Skip.EXTENSION: 1} and first.skipped_examples[Skip.EXTENSION] == ["in/notes.txt"]
    assert all(u.is_new for u in first.uploads)
    assert bucket.tick([obj("in/a.jpg"), obj("in/b.jpg", 1)]).uploads == []


def test_upload_in_the_same_second_as_the_last_tick_is_not_missed():
    bucket = Bucket()
    bucket.tick([obj("in/a.jpg", 5)])
    later = bucket.tick([obj("in/a.jpg", 5), obj("in/b.jpg", 5)])  # b appeared after the tick, same second
    assert keys(later) == ["in/b.jpg"]


def test_object_that_shows_up_with_an_old_timestamp_is_not_missed():
    # A multipart upload's LastModified is when it *started*: it can appear long after newer objects.
    bucket = Bucket()
    bucket.tick([obj("in/new.jpg", 3600)])
    assert keys(bucket.tick([obj("in/new.jpg", 3600), obj("in/slow.jpg", 0)])) == ["in/slow.jpg"]


def test_reupload_with_a_new_etag_is_a_new_version():
    bucket = Bucket()
    bucket.tick([obj("in/a.jpg", 0, "v1")])
    plan = bucket.tick([obj("in/a.jpg", 30, "v2")])
    assert keys(plan) == ["in/a.jpg"] and not plan.uploads[0].is_new
    assert bucket.tick([obj("in/a.jpg", 30, "v2")]).uploads == []


def test_reupload_long_after_the_first_upload():
    bucket = Bucket()
    bucket.tick([obj("in/a.jpg", 0, "v1")])
    for step in range(1, 5):  # the watermark moves on, pruning a's fingerprint
        bucket.tick([obj("in/a.jpg", 0, "v1"), obj(f"in/other{step}.jpg", step * 3600)])
    assert len(bucket.cursor.recent) == 1
    plan = bucket.tick([obj("in/a.jpg", 5 * 3600, "v2")])
    assert keys(plan) == ["in/a.jpg"]


def test_a_burst_leaves_a_bounded_cursor_and_nothing_is_taken_twice(monkeypatch):
    monkeypatch.setattr(upload_tracking, "MAX_RECENT", 100)
    bucket = Bucket()
    burst = [obj(f"in/{i:05d}.jpg", i // 30) for i in range(1000)]  # 30 objects per second of LastModified
    assert len(bucket.tick(burst, max_uploads=10_000).uploads) == 1000
    assert len(bucket.cursor.dump()) < 100 * 40 + 200 and len(bucket.cursor.recent) <= 100
    assert bucket.tick(burst).uploads == []  # those under the floor count as processed; the newest are in recent
    # A re-upload after the burst (a new LastModified) is still seen, as is one inside the kept window.
    newest_kept = burst[-1]
    plan = bucket.tick(burst[:-1] + [obj(newest_kept.key, newest_kept.last_modified.second + 60, "v2")])
    assert keys(plan) == [newest_kept.key] and not plan.uploads[0].is_new


def test_a_burst_in_one_second_leaves_an_empty_window(monkeypatch):
    monkeypatch.setattr(upload_tracking, "MAX_RECENT", 100)
    bucket = Bucket()
    burst = [obj(f"in/{i:05d}.jpg", 0) for i in range(500)]
    bucket.tick(burst)
    assert bucket.cursor.recent == {} and bucket.cursor.floor == T0.timestamp()
    assert bucket.tick(burst).uploads == []
    assert keys(bucket.tick(burst + [obj("in/late.jpg", 0)])) == ["in/late.jpg"]  # new: unregistered, not windowed


def test_more_uploads_than_a_tick_takes_wait_for_the_next_tick():
    bucket = Bucket()
    objects = [obj(f"in/{i:05d}.jpg", i // 100) for i in range(2500)]
    taken = []
    for _ in range(3):
        taken += keys(bucket.tick(objects, max_uploads=1000))
    assert sorted(taken) == sorted(o.key for o in objects)
    assert len(taken) == len(set(taken))
    assert bucket.tick(objects).uploads == []


def test_restart_with_a_lost_cursor_registers_nothing_twice():
    bucket = Bucket()
    objects = [obj("in/a.jpg"), obj("in/b.jpg", 1)]
    bucket.tick(objects)
    bucket.cursor = UploadCursor()  # sensor reset
    assert bucket.tick(objects).uploads == []
    assert keys(bucket.tick([obj("in/a.jpg", 60, "v2"), obj("in/b.jpg", 1)])) == ["in/a.jpg"]


def test_colliding_partition_keys_are_reported_not_fatal():
    plan = plan_tick(
        [obj("in/a.jpg"), obj("in/b.jpg")],
        set(),
        UploadCursor(),
        materialized=set,
        upload_filter=FILTER,
        partition_key_of=lambda key: "same",
        lookback=timedelta(minutes=1),
        max_uploads=10,
    )
    assert keys(plan) == ["in/a.jpg"] and plan.conflicts == ["in/b.jpg"]


def test_fresh_cursor_retakes_registered_objects_that_were_never_processed():
    bucket = Bucket()
    bucket.tick([obj("in/a.jpg"), obj("in/b.jpg", 1)])
    bucket.materialized.discard("b.jpg")  # b's run was lost with the cursor
    bucket.cursor = UploadCursor()
    plan = bucket.tick([obj("in/a.jpg"), obj("in/b.jpg", 1)])
    assert keys(plan) == ["in/b.jpg"] and not plan.uploads[0].is_new


def test_unsettled_files_wait():
    bucket = Bucket()
    plan = bucket.tick([obj("in/a.jpg", 0), obj("in/b.jpg", 10)], settled_before=T0 + timedelta(seconds=5))
    assert keys(plan) == ["in/a.jpg"] and plan.skipped == {Skip.UNSETTLED: 1}
    assert keys(bucket.tick([obj("in/a.jpg", 0), obj("in/b.jpg", 10)])) == ["in/b.jpg"]


def test_odd_keys_map_to_their_partition_keys():
    plan = Bucket().tick([obj("in/my photo, 2.jpg")])
    assert plan.uploads[0].partition_key == partition_key_for("my photo, 2.jpg")


def test_contiguous_batches():
    order = ["a", "b", "c", "d", "e", "f", "g"]
    assert contiguous_batches(order, {"a", "b", "c", "d", "e", "f", "g"}, 3) == [["a", "b", "c"], ["d", "e", "f"], ["g"]]
    assert contiguous_batches(order, {"a", "b", "e", "f", "g"}, 10) == [["a", "b"], ["e", "f", "g"]]
    assert contiguous_batches(order, {"c"}, 10) == [["c"]]
    assert contiguous_batches(order, set(), 10) == []


@pytest.mark.parametrize("size", [1, 2, 5])
def test_batches_cover_the_selection_exactly(size):
    order = [f"k{i}" for i in range(20)]
    selected = {f"k{i}" for i in (0, 1, 2, 5, 6, 7, 8, 19)}
    batches = contiguous_batches(order, selected, size)
    assert sorted(k for b in batches for k in b) == sorted(selected)
    assert all(len(b) <= size for b in batches)
    for batch in batches:  # a range run covers everything between its ends: only the selected keys
        assert order[order.index(batch[0]) : order.index(batch[-1]) + 1] == batch


def listing_pass(objects, max_uploads, settled_before=lambda tick: None, ticks=6):
    """A fresh listing pass as the upload sensor runs it: each tick lists from where the last one resumes
    (`resume_after`), plans the slice, and registers what it took. Every upload taken, in order."""
    registered, cursor, after, taken = set(), UploadCursor(), "", []
    for tick in range(ticks):
        listed = ListedSlice(objects=[o for o in objects if o.key > after], truncated=False)
        plan = plan_tick(listed.objects, registered, cursor, materialized=set, upload_filter=FILTER,
                         partition_key_of=partition_key_for, lookback=timedelta(minutes=15), max_uploads=max_uploads,
                         settled_before=settled_before(tick), fresh=True, slice_of_listing=True)
        taken += keys(plan)
        registered |= set(plan.new_partition_keys)
        cursor = plan.cursor
        after, complete = resume_after(listed, after, plan.waiting)
        if complete:
            return taken
    raise AssertionError(f"the pass did not end in {ticks} ticks")


def test_a_capped_listing_slice_takes_the_first_keys_so_the_next_slice_takes_nothing_twice():
    """More uploads than a tick takes, their LastModified out of key order (concurrent clients): the next slice
    starts just before the first key that waited, so a tick takes a prefix of its slice's keys. Taken oldest first,
    the next slice listed uploads already taken again, and a fresh pass (none of them materialized yet) requested
    them twice (seen as a flaky tests/test_upload_sensor.py::test_more_than_1000_new_objects)."""
    objects = [obj(f"in/{i:05d}.jpg", (i * 7) % 5) for i in range(1500)]
    taken = listing_pass(objects, max_uploads=1000)
    assert sorted(taken) == [o.key for o in objects] and len(taken) == len(set(taken))


def test_uploads_after_one_still_being_written_wait_with_it_in_a_listing_slice():
    """A file still being written waits, and the next slice starts just before it: the uploads after it in the
    slice wait too, or that slice would list them again. Where it is the slice's first key, the slice moves on
    and takes the rest (the file waits for the next pass, as before)."""
    objects = [obj(f"in/{i:05d}.jpg", i % 3) for i in range(30)]
    writing = objects[10].key
    late = [obj(o.key, 60) if o.key == writing else o for o in objects]  # modified after the first tick's horizon
    first = plan_tick(late, set(), UploadCursor(), materialized=set, upload_filter=FILTER,
                      partition_key_of=partition_key_for, lookback=timedelta(minutes=15), max_uploads=1000,
                      settled_before=T0 + timedelta(seconds=10), fresh=True, slice_of_listing=True)
    assert keys(first) == [o.key for o in objects[:10]] and min(first.waiting) == writing
    taken = listing_pass(late, max_uploads=1000,
                         settled_before=lambda tick: T0 + timedelta(seconds=10 if tick == 0 else 100))
    assert sorted(taken) == [o.key for o in objects] and len(taken) == len(set(taken))
    alone = plan_tick(late[10:], set(), UploadCursor(), materialized=set, upload_filter=FILTER,
                      partition_key_of=partition_key_for, lookback=timedelta(minutes=15), max_uploads=1000,
                      settled_before=T0 + timedelta(seconds=10), fresh=True, slice_of_listing=True)
    assert keys(alone) == [o.key for o in objects[11:]]  # the slice's first key is being written: it moves on
