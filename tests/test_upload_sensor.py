"""The upload sensor against a real S3 endpoint: never misses an object, never registers one twice."""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote, urlsplit

import pytest

from tests.conftest import SensorDriver, image_bytes
from vision_assets.resources import LocalImageStore, UploadPolicy
from vision_assets.vision.partition_keys import partition_key_for
from vision_assets.vision.storage.registrations import Registrations
from vision_assets.vision.upload_tracking import UploadCursor
from vision_assets.wiring import build_definitions

pytestmark = pytest.mark.slow  # see docs/testing.md: `uv run pytest -m "not slow"` leaves it out


@pytest.fixture
def driver(models, s3_image_store, instance):
    return SensorDriver(build_definitions(s3_image_store, models), instance)


def upload(s3_client, bucket, *names, data=None):
    for name in names:
        s3_client.put_object(Bucket=bucket, Key=f"uploads/{name}", Body=data or image_bytes())


def batch_images(store, result) -> list[list[str]]:
    """The images of each run the tick requested, from its batch's manifest."""
    return [store.results.read_manifest(r.partition_key).images for r in result.run_requests]


def registrations(store, driver) -> Registrations:
    """Every image's newest registration, as the runs of its batches see it."""
    manifests = store.results.read_manifests(driver.batches)
    return Registrations(store.results, [manifests[b] for b in driver.batches])  # a later batch wins


def test_new_uploads_become_one_batch_and_one_run(driver, s3_client, bucket, s3_image_store):
    upload(s3_client, bucket, "a.jpg", "b.png", "my photo, 1.jpg")
    s3_client.put_object(Bucket=bucket, Key="elsewhere/x.jpg", Body=b"x")  # outside the prefix
    s3_client.put_object(Bucket=bucket, Key="uploads/readme.md", Body=b"x")  # not an image extension
    result = driver.tick()
    expected = ["a.jpg", "b.png", partition_key_for("my photo, 1.jpg")]
    assert sorted(driver.partitions) == sorted(expected)  # the image registry
    [request] = result.run_requests
    assert driver.batches == [request.partition_key] and request.run_key
    assert sorted(batch_images(s3_image_store, result)[0]) == sorted(expected)
    # The mapping back to the object is stored, not guessed: one manifest for the batch, nothing per object.
    listed = [o.key for o in s3_image_store.objects.list(s3_image_store.results_prefix)]
    ticks = [key for key in listed if "/~ticks/" in key]  # the tick's batch keys, until the next tick (one a tick)
    assert [key for key in listed if key not in ticks] == [s3_image_store.results.manifest_key(request.partition_key)]
    assert len(ticks) == 1
    registration = registrations(s3_image_store, driver).find(partition_key_for("my photo, 1.jpg"))
    assert registration.object_key == "uploads/my photo, 1.jpg"
    assert registration.source_uri == f"s3://{bucket}/uploads/my%20photo%2C%201.jpg"  # a URI: percent-encoded
    assert driver.tick().run_requests == []


def test_upload_in_the_same_second_as_the_cursor(driver, s3_client, bucket, s3_image_store):
    for _attempt in range(5):  # S3 timestamps have 1 s resolution: retry until both land in one second
        upload(s3_client, bucket, f"first{_attempt}.jpg")
        driver.tick()
        upload(s3_client, bucket, f"second{_attempt}.jpg")
        first = s3_client.head_object(Bucket=bucket, Key=f"uploads/first{_attempt}.jpg")["LastModified"]
        second = s3_client.head_object(Bucket=bucket, Key=f"uploads/second{_attempt}.jpg")["LastModified"]
        result = driver.tick()
        assert batch_images(s3_image_store, result) == [[f"second{_attempt}.jpg"]]
        if first == second:
            break
    else:
        pytest.fail("could not place two uploads in the same second")
    assert driver.tick().run_requests == []


def test_more_than_1000_new_objects(models, s3_image_store, instance, s3_client, bucket):
    defs = build_definitions(s3_image_store, models, UploadPolicy(batch_size=400, max_uploads_per_tick=1000))
    driver = SensorDriver(defs, instance)
    names = [f"bulk/{i:05d}.jpg" for i in range(1500)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: s3_client.put_object(Bucket=bucket, Key=f"uploads/{n}", Body=b"x"), names))

    first, second, third = driver.tick(), driver.tick(), driver.tick()
    assert [len(r.run_requests) for r in (first, second, third)] == [3, 2, 0]
    assert sorted(driver.partitions) == names and len(set(driver.partitions)) == 1500
    assert len(driver.batches) == 5 == len(set(driver.batches))
    covered = []
    for batch in batch_images(s3_image_store, first) + batch_images(s3_image_store, second):
        assert len(batch) <= 400
        covered += batch
    assert sorted(covered) == names  # every object in exactly one batch


def test_reupload_is_a_new_version_in_a_new_batch(driver, s3_client, bucket, s3_image_store):
    upload(s3_client, bucket, "a.jpg", "b.jpg", "c.jpg")
    first = driver.tick()
    old_etag = registrations(s3_image_store, driver).find("b.jpg").etag
    upload(s3_client, bucket, "b.jpg", data=image_bytes(color=(0, 0, 255)))
    result = driver.tick()
    assert driver.partitions == ["a.jpg", "b.jpg", "c.jpg"]  # the same image, registered once
    assert batch_images(s3_image_store, result) == [["b.jpg"]]
    assert result.run_requests[0].partition_key != first.run_requests[0].partition_key  # a batch of its own
    assert registrations(s3_image_store, driver).find("b.jpg").etag != old_etag  # the newest batch wins
    assert driver.tick().run_requests == []


def test_reuploads_and_new_objects_share_a_batch(driver, s3_client, bucket, s3_image_store):
    upload(s3_client, bucket, "a.jpg", "b.jpg", "c.jpg", "d.jpg")
    driver.tick()
    upload(s3_client, bucket, "a.jpg", "d.jpg", data=image_bytes(color=(1, 2, 3)))
    upload(s3_client, bucket, "e.jpg")
    result = driver.tick()
    assert [sorted(images) for images in batch_images(s3_image_store, result)] == [["a.jpg", "d.jpg", "e.jpg"]]


def test_restart_keeps_the_cursor_and_registers_nothing_twice(models, s3_image_store, instance, s3_client, bucket):
    upload(s3_client, bucket, "a.jpg", "b.jpg")
    before = SensorDriver(build_definitions(s3_image_store, models), instance)
    assert [run.success for run in before.tick_and_run()] == [True]
    restarted = SensorDriver(build_definitions(s3_image_store, models), instance)  # a new process, the stored cursor
    restarted.cursor = before.cursor
    upload(s3_client, bucket, "c.jpg")
    assert [run.success for run in restarted.tick_and_run()] == [True]
    reset = SensorDriver(build_definitions(s3_image_store, models), instance)  # cursor lost altogether
    assert reset.tick().run_requests == []
    assert instance.get_dynamic_partitions("images") == ["a.jpg", "b.jpg", "c.jpg"]


@pytest.mark.parametrize("earlier_ticks", [0, 1])
def test_a_tick_retried_after_a_crash_requests_the_same_runs(driver, s3_client, bucket, earlier_ticks):
    """The daemon added the partitions, then died before launching runs or storing the cursor: the tick is evaluated
    again. It must ask for the same runs (same run keys, so Dagster launches each once), not forget them."""
    for i in range(earlier_ticks):
        upload(s3_client, bucket, f"earlier{i}.jpg")
        driver.tick()
    upload(s3_client, bucket, "a.jpg", "b.jpg")
    cursor = driver.cursor
    first = driver.tick()
    driver.cursor = cursor
    again = driver.tick()
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
    assert len(first.run_requests) == 1 and driver.partitions.count("a.jpg") == 1
    # The same batch, not a second one: no partition is left that no run will ever take.
    assert [r.partition_key for r in again.run_requests] == [r.partition_key for r in first.run_requests]
    assert len(driver.batches) == earlier_ticks + 1, driver.batches


def test_a_stored_tick_forgets_its_decided_keys(driver, s3_client, bucket, s3_image_store):
    from vision_assets.vision.storage.tick_ledger import TICKS

    upload(s3_client, bucket, "a.jpg")
    driver.tick()
    decided = [o.key for o in s3_image_store.objects.list(f"{s3_image_store.results_prefix}{TICKS}")]
    assert len(decided) == 1
    driver.tick()  # the cursor it stored proves the first tick was stored
    assert list(s3_image_store.objects.list(f"{s3_image_store.results_prefix}{TICKS}")) == []


def test_empty_batches_left_by_earlier_versions_are_removed(driver, s3_client, bucket, s3_image_store, instance):
    """An earlier version, evaluated again after a crash, registered a tick's images in a second set of batches; the
    first set never ran and stayed Missing. Those (and a batch without a manifest) go; a batch that ran stays."""
    from datetime import UTC, datetime, timedelta

    from vision_assets.vision.batches import BatchManifest, batch_key

    upload(s3_client, bucket, "a.jpg", "b.jpg")
    [run] = driver.tick_and_run()  # the second set: registered, ingested
    assert run.success
    [kept] = driver.batches
    manifest = s3_image_store.results.read_manifest(kept)
    two_hours_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    orphan, no_manifest = batch_key(two_hours_ago, 0), batch_key(two_hours_ago, 1)
    s3_image_store.results.write_manifests([BatchManifest(batch=orphan, created_at=two_hours_ago,
                                                          images=manifest.images,
                                                          registrations=manifest.registrations)])
    instance.add_dynamic_partitions("batches", [orphan, no_manifest])
    recent = batch_key(datetime.now(UTC).replace(microsecond=0), 99)  # too young to judge
    instance.add_dynamic_partitions("batches", [recent])

    cursor = UploadCursor.parse(driver.cursor)
    driver.cursor = cursor.model_copy(update={"swept_at": None}).dump()  # the ten minutes are up
    driver.tick()
    assert sorted(driver.batches) == sorted([kept, recent])


def test_results_are_never_mistaken_for_uploads(driver, s3_client, bucket):
    upload(s3_client, bucket, "a.jpg")
    [run] = driver.tick_and_run()
    assert run.success
    listed = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.startswith("results/a.jpg/~normalized") for k in listed)
    assert driver.tick().run_requests == []


def test_local_folder_store(models, local_image_store, instance, tmp_path):
    driver = SensorDriver(build_definitions(local_image_store, models), instance)
    folder = tmp_path / "bucket" / "cam 1"
    folder.mkdir(parents=True)
    (folder / "x.jpg").write_bytes(image_bytes(fmt="JPEG"))
    runs = driver.tick_and_run()
    assert [r.success for r in runs] == [True]
    assert driver.partitions == [partition_key_for("cam 1/x.jpg")]
    time.sleep(0.01)
    (folder / "x.jpg").write_bytes(image_bytes(fmt="JPEG", color=(9, 9, 9)))
    assert len(driver.tick().run_requests) == 1


def test_a_file_still_being_written_in_the_first_pass_leaves_every_file_in_one_batch(models, instance, tmp_path):
    """A local folder while photos are still being copied in as the first listing pass runs: the files after the one
    being written wait with it, and every file lands in exactly one batch. (Before, the tick took them, the next
    tick listed them again from just before the waiting file, and the fresh pass requested them a second time.)"""
    store = LocalImageStore(root=str(tmp_path / "bucket"), results_prefix="results/", settle_seconds=60)
    driver = SensorDriver(build_definitions(store, models), instance)
    folder = tmp_path / "bucket"
    folder.mkdir()
    names = [f"{i:02d}.jpg" for i in range(30)]
    for name in names:
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (time.time() - 3600, time.time() - 3600))
    os.utime(folder / names[10])  # still being written: modified now
    first = batch_images(store, driver.tick())
    assert sorted(image for batch in first for image in batch) == names[:10]
    os.utime(folder / names[10], (time.time() - 3600, time.time() - 3600))  # written
    later = [batch for _ in range(3) for batch in batch_images(store, driver.tick())]
    taken = [image for batch in first + later for image in batch]
    assert sorted(taken) == names and len(taken) == len(set(taken))


def test_a_file_name_that_is_not_utf8_never_wedges_the_sensor(models, local_image_store, instance, tmp_path):
    """A Latin-1 file name in the folder bucket: skipped and named (escaped) in the tick's log; the rest of the
    bucket goes on being registered."""
    folder = tmp_path / "bucket"
    folder.mkdir(parents=True, exist_ok=True)
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"), "wb") as handle:
        handle.write(image_bytes(fmt="JPEG"))
    (folder / "results").mkdir(exist_ok=True)
    (folder / "results" / "dropped-here.jpg").write_bytes(image_bytes(fmt="JPEG"))
    driver = SensorDriver(build_definitions(local_image_store, models), instance)
    first = driver.tick()
    assert first.run_requests == [] and "1 skipped, names that are not valid UTF-8" in first.skip_message
    assert "caf\\xe9.jpg" in first.skip_message and "1 skipped, under the results prefix" in first.skip_message
    (folder / "fine.jpg").write_bytes(image_bytes(fmt="JPEG"))
    runs = driver.tick_and_run()
    assert [r.success for r in runs] == [True] and driver.partitions == ["fine.jpg"]


def test_hostile_keys_register_with_uris_that_name_them_exactly(driver, s3_client, bucket, s3_image_store):
    """Each hostile key becomes its own partition, and its stored `source_uri` parses back to exactly that key."""
    from tests.vision.storage.test_object_stores import HOSTILE_KEYS, S3_ONLY_KEYS

    names = [k for k in HOSTILE_KEYS + S3_ONLY_KEYS if k.rstrip().endswith(".jpg")]
    for name in names:
        upload(s3_client, bucket, name)
    result = driver.tick()
    assert len(driver.partitions) == len(names)  # NFC/NFD twins and look-alikes stay apart
    assert sum(int(r.tags["vision_assets/images"]) for r in result.run_requests) == len(names)
    found = registrations(s3_image_store, driver)
    for partition in driver.partitions:
        registration = found.find(partition)
        parts = urlsplit(registration.source_uri)
        assert (parts.netloc, unquote(parts.path.removeprefix("/"))) == (bucket, registration.object_key)
    assert {found.find(p).object_key for p in driver.partitions} == {
        f"uploads/{name}" for name in names}


def test_a_bucket_bigger_than_a_slice_is_listed_over_several_ticks(models, s3_image_store, instance, s3_client,
                                                                   bucket, monkeypatch):
    """A tick lists at most `list_keys_per_tick` keys (shrunk to 4 here; 20,000 by default) and the next tick
    resumes after the last; a pass's progress is in the cursor and the tick's message; deletions are judged per
    slice for plain ids and at the pass's end for slugged ones."""
    defs = build_definitions(s3_image_store, models, UploadPolicy(list_keys_per_tick=4))
    driver = SensorDriver(defs, instance)
    plain = [f"p{i:02d}.jpg" for i in range(9)]
    odd = ["my photo 1.jpg", "my photo 2.jpg"]  # slugged ids: `my_photo_1.jpg~<hash>`
    upload(s3_client, bucket, *plain, *odd)
    s3_client.put_object(Bucket=bucket, Key="uploads/notes.md", Body=b"x")  # listed, not an image
    listed: list[int] = []
    real = type(s3_image_store.objects).list_slice

    def spy(self, prefix, start_after, max_objects):
        page = real(self, prefix, start_after, max_objects)
        listed.append(len(page.objects))
        return page
    monkeypatch.setattr(type(s3_image_store.objects), "list_slice", spy)

    def a_pass() -> list:
        ticks = [driver.tick()]
        while json.loads(driver.cursor)["listing"] is not None:
            ticks.append(driver.tick())
        return ticks

    first = a_pass()  # 12 keys ("my photo ..." < "notes.md" < "p00.jpg") in slices of 4
    assert listed == [4, 4, 4] and len(first) == 3
    assert sorted(driver.partitions) == sorted(plain + [partition_key_for(k) for k in odd])
    assert all(len(r.run_requests) == 1 for r in first[:3])  # each slice's new images: a batch of their own
    assert json.loads(driver.cursor)["last_pass_keys"] == 12

    s3_client.delete_object(Bucket=bucket, Key="uploads/p03.jpg")
    s3_client.delete_object(Bucket=bucket, Key="uploads/my photo 2.jpg")
    upload(s3_client, bucket, "a-late.jpg")  # sorts first: registered by the first slice of the next pass
    listed.clear()
    second = a_pass()
    assert listed == [4, 4, 3]
    requests = [(i, r) for i, tick in enumerate(second) for r in tick.run_requests]
    deleted = {i: r.run_config["ops"] for i, r in requests if r.job_name == "delete_images"}
    # p03.jpg is in the second slice's range (p00.jpg, p05.jpg]; my photo 2.jpg is judged when the pass ends
    assert sorted(deleted) == [1, 2]
    assert "p03.jpg" in json.dumps(deleted[1]) and partition_key_for("my photo 2.jpg") in json.dumps(deleted[2])
    assert "p03.jpg" not in driver.partitions and partition_key_for("my photo 2.jpg") not in driver.partitions
    assert "a-late.jpg" in driver.partitions
    quiet = a_pass()  # nothing changed: each tick says how far the pass is
    assert [t.run_requests for t in quiet] == [[], [], []]
    assert "listing pass 3: 4 of about 11 keys listed in 1 slice(s)" in quiet[0].skip_message
    assert "listing pass 3: 11 keys listed in 3 slice(s): complete" in quiet[2].skip_message
    # Only the last pass's notes on slugged ids are kept (they name the objects of ids the next pass misses).
    notes = list(s3_image_store.objects.list(f"{s3_image_store.results_prefix}~listing/"))
    assert [n.key.split("/")[2].split("-")[0] for n in notes] == ["000003"]
    assert json.loads(s3_image_store.objects.get(notes[0].key)[1]) == {
        partition_key_for("my photo 1.jpg"): "uploads/my photo 1.jpg"}
