"""One registered object through ingest, without Dagster: what the model stages will read."""

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
