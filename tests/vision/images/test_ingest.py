"""One registered object through ingest, without Dagster: what the model stages will read."""

import os

from tests.conftest import image_bytes
from vision_assets.vision.images.ingest import ingest_image
from vision_assets.vision.images.validation import ValidationLimits
from vision_assets.vision.records import RegisteredImage
from vision_assets.vision.storage.object_store import FolderObjectStore
from vision_assets.vision.storage.results_store import ResultsStore


def ingested(tmp_path, size, working_side):
    store = FolderObjectStore(tmp_path)
    results = ResultsStore(store, "results/")
    store.put("in/big.jpg", image_bytes(size, fmt="JPEG", color=(30, 120, 200)))
    described = store.head("in/big.jpg")
    results.write_registration(RegisteredImage(partition_key="big.jpg", object_key="in/big.jpg",
                                               source_uri=store.uri("in/big.jpg"), etag=described.etag,
                                               size=described.size, last_modified=described.last_modified))
    record = ingest_image("big.jpg", store, results, ValidationLimits(), working_side=working_side)
    return record, results.read_normalized("big.jpg")


def test_a_large_photo_is_read_by_the_models_at_the_working_side(tmp_path):
    """A 50 MP photo cost every stage 150 MB of pixels per image held; the models look at 224-640 px. The copy they
    read is scaled down once, at ingest; the record keeps both sizes (boxes are measured in the copy's pixels)."""
    record, normalized = ingested(tmp_path, (6000, 4000), working_side=1024)
    assert record.is_valid and (record.facts.width, record.facts.height) == (6000, 4000)
    assert normalized.size == (1024, 683) == (record.normalized_width, record.normalized_height)
    assert all(abs(a - b) <= 3 for a, b in zip(normalized.getpixel((500, 300)), (30, 120, 200)))  # the same picture


def test_a_photo_within_the_working_side_is_kept_as_it_is(tmp_path):
    record, normalized = ingested(tmp_path, (800, 600), working_side=1024)
    assert normalized.size == (800, 600) == (record.facts.width, record.facts.height)
    record, normalized = ingested(tmp_path / "full", (3000, 2000), working_side=0)
    assert normalized.size == (3000, 2000)


def ingest_bytes(tmp_path, data: bytes, working_side=4096, model_side=640):
    store = FolderObjectStore(tmp_path)
    results = ResultsStore(store, "results/")
    store.put("in/photo.jpg", data)
    described = store.head("in/photo.jpg")
    results.write_registration(RegisteredImage(partition_key="photo.jpg", object_key="in/photo.jpg",
                                               source_uri=store.uri("in/photo.jpg"), etag=described.etag,
                                               size=described.size, last_modified=described.last_modified))
    record = ingest_image("photo.jpg", store, results, ValidationLimits(), working_side=working_side,
                          model_side=model_side)
    return record, results, store


def test_an_upright_jpeg_is_its_own_working_copy_and_the_models_read_a_small_input(tmp_path):
    """Pixels paid once: the file itself serves as the working copy (no full decode, no encoding at ingest), and the
    picture at the detector's side is written beside it, from the one reduced decode, for the model stages."""
    data = image_bytes((2000, 1500), fmt="JPEG", color=(30, 120, 200), quality=90)
    record, results, store = ingest_bytes(tmp_path, data)
    assert record.is_valid and (record.normalized_width, record.normalized_height) == (2000, 1500)
    assert store.get(record.normalized_key)[1] == data and record.model_input_side == 640
    detector_view = results.read_working("photo.jpg", 640 / 2000, record)
    assert detector_view.image.size == (640, 480) and detector_view.size == (2000, 1500)
    assert detector_view.to_working([64.0, 48.0, 640.0, 480.0]) == [200.0, 150.0, 2000.0, 1500.0]
    crops_view = results.read_working("photo.jpg", 0.5, record)  # more than the model input has: the working copy
    assert crops_view.image.size == (1000, 750) and crops_view.crop([0, 0, 400, 200]).size == (200, 100)


def test_an_upload_that_is_its_own_working_copy_is_copied_within_the_store_not_written_again(object_store):
    """A 12 MP photo's 3-4 MB are not written (or uploaded to S3) a second time: S3 copies server side, a folder
    links; and where the upload changed since it was read, the bytes that were validated are written instead."""
    data = image_bytes((1200, 900), fmt="JPEG", color=(30, 120, 200), quality=90)
    results = ResultsStore(object_store, "results/")
    written: list[str] = []
    put, get = object_store.put, object_store.get
    replace_after_reading = False

    def counted_put(key, *args, **kwargs):
        written.append(key)
        put(key, *args, **kwargs)

    def get_then_maybe_replace(key, *args, **kwargs):
        answer = get(key, *args, **kwargs)
        if replace_after_reading and key.startswith("in/"):
            put(key, b"replaced")
        return answer

    object_store.put, object_store.get = counted_put, get_then_maybe_replace
    for name, changed_meanwhile in (("a.jpg", False), ("b.jpg", True)):
        put(f"in/{name}", data)
        described = object_store.head(f"in/{name}")
        results.write_registration(RegisteredImage(partition_key=name, object_key=f"in/{name}",
                                                   source_uri=object_store.uri(f"in/{name}"), etag=described.etag,
                                                   size=described.size, last_modified=described.last_modified))
        replace_after_reading = changed_meanwhile  # replaced between the ingest's read and its copy
        record = ingest_image(name, object_store, results, ValidationLimits(), working_side=4096, model_side=640)
        replace_after_reading = False
        assert record.is_valid and get(record.normalized_key)[1] == data
        assert (record.normalized_key in written) == changed_meanwhile, name
    if isinstance(object_store, FolderObjectStore):
        linked = object_store.root / "results" / "a.jpg"
        assert any(os.stat(p).st_nlink == 2 for p in linked.iterdir())  # the upload's file, linked


def test_a_turned_jpeg_is_made_upright_once_and_its_model_input_is_upright_too(tmp_path):
    from tests.conftest import phone_photo_bytes

    record, results, _ = ingest_bytes(tmp_path, phone_photo_bytes((1200, 800), fmt="JPEG", orientation=6))
    assert record.is_valid and (record.normalized_width, record.normalized_height) == (800, 1200)
    assert results.read_working("photo.jpg", 0.5, record).image.size == (427, 640)  # the model input, upright
    assert results.read_normalized("photo.jpg").size == (800, 1200)  # re-encoded: the file itself is turned
