from datetime import datetime, timedelta, timezone

from vision_assets.vision.storage.object_store import FolderObjectStore
from vision_assets.vision.records import RegisteredImage
from vision_assets.vision.storage.registrations import Registrations, batch_name
from vision_assets.vision.storage.results_store import ResultsStore

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


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


def test_a_tagged_run_reads_its_batch_once(tmp_path):
    store = CountingStore(tmp_path)
    results = ResultsStore(store, "results/")
    results.write_registration_batches({"b1": [registration("a.jpg"), registration("b.jpg")]})
    registrations = Registrations(results, "b1")
    assert registrations.find("a.jpg").object_key == "in/a.jpg" and registrations.find("b.jpg").etag == "e1"
    assert store.gets == [results.registration_batch_key("b1")]


def test_an_untagged_run_prefers_the_images_own_copy_then_the_newest_batch(tmp_path):
    store = CountingStore(tmp_path)
    results = ResultsStore(store, "results/")
    old, new = batch_name("run-1", T0), batch_name("run-2", T0 + timedelta(seconds=1))
    results.write_registration_batches({old: [registration("a.jpg", "v1"), registration("b.jpg")],
                                        new: [registration("a.jpg", "v2")]})
    results.write_registration(registration("c.jpg", "own"))
    registrations = Registrations(results)
    assert registrations.find("a.jpg").etag == "v2"  # a re-upload: the newest batch wins
    assert registrations.find("b.jpg").etag == "e1"
    assert registrations.find("c.jpg").etag == "own"
    assert registrations.find("never-registered.jpg") is None
    batch_reads = [key for key in store.gets if "~registrations/" in key]
    assert sorted(batch_reads) == sorted({results.registration_batch_key(old), results.registration_batch_key(new)})


def test_a_missing_batch_falls_back_to_the_search(tmp_path):
    results = ResultsStore(FolderObjectStore(tmp_path), "results/")
    results.write_registration_batches({batch_name("run-1"): [registration("a.jpg")]})
    assert Registrations(results, "deleted-by-hand").find("a.jpg").object_key == "in/a.jpg"
