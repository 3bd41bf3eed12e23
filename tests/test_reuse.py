"""No model is paid twice for the same bytes: a photo uploaded again under another name, in a later batch, takes the
first one's detections, vectors, labels and referee opinions; a re-encoded copy (a near duplicate) is processed as
usual. Real runs: the sensor's runs over a real S3 endpoint, the real model classes (tiny random weights)."""

import io
from collections import Counter

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from tests.conftest import PHOTOS, SensorDriver, embedded_client, run_pipeline
from vision_assets.settings import Settings
from vision_assets.vision.index.vector_index import image_point_id
from vision_assets.vision.models.classifier import ImageClassifier
from vision_assets.vision.models.detector import YoloDetector
from vision_assets.vision.models.embedder import ClipEmbedder
from vision_assets.vision.models.referee import VisionLanguageReferee
from vision_assets.vision.models.taxonomy import TaxonClassifier
from vision_assets.vision.records import DetectionsRecord, EmbeddingsRecord, LabelsRecord, RefereeRecord
from vision_assets.vision.storage.results_store import DETECTIONS, EMBEDDING_VECTORS, EMBEDDINGS, LABELS, REFEREE
from vision_assets.wiring import build_definitions, model_resources_from

pytestmark = pytest.mark.slow

MODEL_STAGES = ["detections", "embeddings", "specialist_labels", "referee_opinions"]


@pytest.fixture
def calls(monkeypatch):
    """How many pictures each model class was asked about."""
    counted = Counter()

    def counting(cls, name):
        original = getattr(cls, name)

        def wrapper(self, items, *args, **kwargs):
            counted[f"{cls.__name__}.{name}"] += len(items)
            return original(self, items, *args, **kwargs)
        monkeypatch.setattr(cls, name, wrapper)

    for cls, name in [(YoloDetector, "detect"), (ClipEmbedder, "embed_images"), (ImageClassifier, "classify"),
                      (TaxonClassifier, "classify"), (VisionLanguageReferee, "judge")]:
        counting(cls, name)
    return counted


def stored(results, key):
    return (results.read(key, DETECTIONS, DetectionsRecord), results.read(key, EMBEDDINGS, EmbeddingsRecord),
            results.read(key, LABELS, LabelsRecord), results.read(key, REFEREE, RefereeRecord))


def same_result(first, second) -> bool:
    """The same record but for whose it is, where it came from and what computing it cost."""
    drop = {"partition_key", "reused_from", "device_seconds"}
    return first.model_dump(exclude=drop) == second.model_dump(exclude=drop)


def test_the_same_bytes_under_another_name_run_no_model_and_a_re_encoded_copy_does(
        offline_models, tmp_path, monkeypatch, s3_image_store, instance, s3_client, bucket, calls):
    monkeypatch.setenv("VISION_ASSETS_OFFLINE_MODELS", str(offline_models))
    monkeypatch.setenv("VISION_ASSETS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VISION_ASSETS_REFEREE", "on")
    monkeypatch.setenv("VISION_ASSETS_SECOND_OPINION_MARGIN", "0")  # doubtful crops, so the referee has opinions
    models = model_resources_from(Settings.from_env())
    driver, first = run_pipeline(models, s3_image_store, instance, s3_client, bucket)
    assert first.success and calls["YoloDetector.detect"] == 3 and calls["VisionLanguageReferee.judge"] > 0
    results = s3_image_store.results
    original = stored(results, "bus.jpg")
    assert original[3] is not None, "the referee judged bus.jpg's doubtful crops"

    calls.clear()
    s3_client.put_object(Bucket=bucket, Key="uploads/bus-again.jpg", Body=(PHOTOS / "bus.jpg").read_bytes())
    [again] = driver.tick_and_run()
    assert again.success
    assert sum(calls.values()) == 0, calls  # no model ran for it
    copy = stored(results, "bus-again.jpg")
    for mine, theirs in zip(copy, original, strict=True):
        assert mine.partition_key == "bus-again.jpg" and mine.reused_from == "bus.jpg" and not mine.device_seconds
        assert same_result(mine, theirs)
    vectors, donor_vectors = results.read_arrays("bus-again.jpg", EMBEDDING_VECTORS), results.read_arrays(
        "bus.jpg", EMBEDDING_VECTORS)
    assert all(np.array_equal(vectors[name], donor_vectors[name]) for name in donor_vectors)
    metadata = {e.asset_key.path[-1]: e.materialization.metadata for e in again.get_asset_materialization_events()}
    for stage in MODEL_STAGES:  # said, and counted, per batch
        assert metadata[stage]["images_reused"].value == 1, stage
        assert not metadata[stage]["device_seconds"].value, stage
    assert metadata["qdrant_index"]["batch_device_seconds_total"].value == 0
    client = embedded_client(models["qdrant"].path)
    try:
        [point] = client.retrieve("images", [image_point_id("bus-again.jpg")], with_payload=True)
        [donor] = client.retrieve("images", [image_point_id("bus.jpg")], with_payload=True)
    finally:
        client.close()
    assert point.payload["top_labels"] == donor.payload["top_labels"] and point.payload["entity"] == donor.payload[
        "entity"]

    calls.clear()  # the same picture re-encoded: other bytes, a near duplicate, processed as usual
    picture = Image.open(PHOTOS / "bus.jpg")
    encoded = io.BytesIO()
    picture.save(encoded, "JPEG", quality=80)
    s3_client.put_object(Bucket=bucket, Key="uploads/bus-recoded.jpg", Body=encoded.getvalue())
    [recoded] = driver.tick_and_run()
    assert recoded.success and calls["YoloDetector.detect"] == 1 and calls["ClipEmbedder.embed_images"] > 0
    assert stored(results, "bus-recoded.jpg")[0].reused_from is None
    metadata = {e.asset_key.path[-1]: e.materialization.metadata for e in recoded.get_asset_materialization_events()}
    assert metadata["detections"]["images_reused"].value == 0
    assert "results prefix" not in (driver.tick().skip_message or "")  # the markers are the pipeline's own files


def test_results_made_with_another_model_are_not_reused(
        offline_models, tmp_path, monkeypatch, s3_image_store, instance, s3_client, bucket, calls):
    monkeypatch.setenv("VISION_ASSETS_OFFLINE_MODELS", str(offline_models))
    monkeypatch.setenv("VISION_ASSETS_DATA_DIR", str(tmp_path / "data"))
    models = model_resources_from(Settings.from_env())
    driver, first = run_pipeline(models, s3_image_store, instance, s3_client, bucket)
    assert first.success
    # The detector's settings shape its boxes: another confidence threshold is another version.
    monkeypatch.setenv("VISION_ASSETS_DETECTOR_CONFIDENCE", "0.06")
    later = SensorDriver(build_definitions(s3_image_store, model_resources_from(Settings.from_env())), instance,
                         whole_pipeline=True)
    later.cursor = driver.cursor
    calls.clear()
    s3_client.put_object(Bucket=bucket, Key="uploads/bus-again.jpg", Body=(PHOTOS / "bus.jpg").read_bytes())
    [again] = later.tick_and_run()
    assert again.success and calls["YoloDetector.detect"] == 1
    assert s3_image_store.results.read("bus-again.jpg", DETECTIONS, DetectionsRecord).reused_from is None
    assert dg.AssetKey("detections") in {e.asset_key for e in again.get_asset_materialization_events()}


def test_opinions_a_donor_left_to_people_are_asked_again_for_the_copy(
        offline_models, tmp_path, monkeypatch, s3_image_store, instance, s3_client, bucket, calls):
    monkeypatch.setenv("VISION_ASSETS_OFFLINE_MODELS", str(offline_models))
    monkeypatch.setenv("VISION_ASSETS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VISION_ASSETS_REFEREE", "on")
    monkeypatch.setenv("VISION_ASSETS_SECOND_OPINION_MARGIN", "0")
    monkeypatch.setenv("VISION_ASSETS_REFEREE_MAX_CROPS_PER_BATCH", "1")  # bus.jpg's other doubtful crops wait
    models = model_resources_from(Settings.from_env())
    driver, first = run_pipeline(models, s3_image_store, instance, s3_client, bucket)
    assert first.success and stored(s3_image_store.results, "bus.jpg")[3].not_judged
    calls.clear()
    s3_client.put_object(Bucket=bucket, Key="uploads/bus-again.jpg", Body=(PHOTOS / "bus.jpg").read_bytes())
    [again] = driver.tick_and_run()
    assert again.success and calls["YoloDetector.detect"] == 0 and calls["VisionLanguageReferee.judge"] > 0
    metadata = {e.asset_key.path[-1]: e.materialization.metadata for e in again.get_asset_materialization_events()}
    assert metadata["detections"]["images_reused"].value == 1 and metadata["referee_opinions"]["images_reused"].value == 0
    assert stored(s3_image_store.results, "bus-again.jpg")[3].reused_from is None
