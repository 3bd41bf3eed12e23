from datetime import UTC, datetime

from vision_assets.vision.batches import BatchManifest, batch_key, batch_order, is_newer, superseded_by
from vision_assets.vision.records import RegisteredImage
from vision_assets.vision.storage.batch_lookup import BatchLookup, record_migrated
from vision_assets.vision.storage.object_store import FolderObjectStore
from vision_assets.vision.storage.registrations import Registrations
from vision_assets.vision.storage.results_store import ResultsStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def registration(key, etag="e1"):
    return RegisteredImage(partition_key=key, object_key=f"in/{key}", source_uri=f"file:///in/{key}", etag=etag,
                           size=1, last_modified=T0)


class CountingStore(FolderObjectStore):
    def __init__(self, root):
        super().__init__(root)
        self.gets: list[str] = []

    def get(self, key, max_bytes=None):
        self.gets.append(key)
        return super().get(key, max_bytes)


def manifest(batch, *registrations, migrated=False):
    return BatchManifest(batch=batch, created_at=T0, images=[r.partition_key for r in registrations],
                         registrations=[] if migrated else list(registrations), migrated=migrated)


def test_a_run_finds_its_images_objects_in_its_manifests_without_reading_anything_else(tmp_path):
    store = CountingStore(tmp_path)
    results = ResultsStore(store, "results/")
    batch = batch_key(T0, 0)
    results.write_manifests([manifest(batch, registration("a.jpg"), registration("b.jpg"))])
    [read] = results.read_manifests([batch]).values()
    store.gets.clear()
    registrations = Registrations(results, [read])
    assert registrations.find("b.jpg").object_key == "in/b.jpg" and store.gets == []


def test_a_migrated_batch_finds_each_image_in_its_own_registration(tmp_path):
    results = ResultsStore(FolderObjectStore(tmp_path), "results/")
    results.write_registration(registration("old.jpg", "v7"))
    registrations = Registrations(results, [manifest(batch_key(T0, 0), registration("old.jpg"), migrated=True)])
    assert registrations.find("old.jpg").etag == "v7"
    assert registrations.find("never.jpg") is None


def test_batch_keys_sort_by_registration_time_then_number_even_past_four_digits():
    first, second, later = batch_key(T0, 9), batch_key(T0, 10_000), batch_key(T0.replace(second=1), 0)
    assert first == "2026-01-01T00:00:00Z-0009" and second.endswith("-10000")
    assert sorted([later, second, first], key=batch_order) == [first, second, later]
    assert is_newer(later, second) and not is_newer(first, first)


def test_an_entry_is_superseded_only_by_a_newer_batch():
    old, new = batch_key(T0, 0), batch_key(T0, 1)
    assert superseded_by(new, old) == new
    assert superseded_by(old, new) is None and superseded_by(old, old) is None and superseded_by(None, old) is None


def test_deleting_removes_an_image_from_its_manifest_and_says_so():
    batch = manifest(batch_key(T0, 0), registration("a.jpg"), registration("b.jpg")).without({"a.jpg"})
    assert batch.images == ["b.jpg"] and [r.partition_key for r in batch.registrations] == ["b.jpg"]
    assert batch.removed == ["a.jpg"]


def test_images_from_before_batches_find_their_batch_in_one_small_file(tmp_path):
    store = CountingStore(tmp_path)
    results = ResultsStore(store, "results/")
    record_migrated(results, {f"img_{i}.jpg": "2026-01-01T00:00:00Z-0000" for i in range(500)})
    record_migrated(results, {"img_0.jpg": "2026-01-01T00:00:00Z-0001"})  # a later slice merges, never drops
    store.gets.clear()
    lookup = BatchLookup(results)
    assert lookup.batch_of("img_0.jpg", None) == "2026-01-01T00:00:00Z-0001"
    assert lookup.batch_of("img_1.jpg", None) == "2026-01-01T00:00:00Z-0000"
    assert lookup.batch_of("unknown.jpg", None) is None
    assert len(store.gets) <= 3


def test_a_second_tick_in_the_same_second_never_reuses_a_batch_key():
    from vision_assets.vision.batches import next_number

    existing = [batch_key(T0, 0), batch_key(T0, 1), batch_key(T0.replace(second=5), 7)]
    assert next_number(T0, existing) == 2 and next_number(T0.replace(second=9), existing) == 0
