"""The whole committee in one batched run: router, experts, generalist, index; real model classes (tiny random
weights), a real S3 endpoint, embedded Qdrant."""

import shutil

import dagster as dg
import pytest

from tests.conftest import PIPELINE_VALID as VALID
from tests.conftest import embedded_client, failed_in, ui_check_statuses
from vision_assets.settings import Settings
from vision_assets.vision.committee.scenes import DEFAULT_SCENES
from vision_assets.vision.index.vector_index import image_point_id
from vision_assets.vision.models.detector import YoloDetector
from vision_assets.vision.models.embedder import ClipEmbedder
from vision_assets.vision.records import EmbeddingsRecord, LabelsRecord
from vision_assets.vision.storage.results_store import EMBEDDINGS, LABELS
from vision_assets.wiring import build_definitions, model_resources_from

pytestmark = pytest.mark.slow  # see docs/testing.md: `uv run pytest -m "not slow"` leaves it out

STAGES = ["source_images", "detections", "embeddings", "specialist_labels", "referee_opinions", "qdrant_index"]


def batch_check(run, name: str) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in run.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def code_versions(defs: dg.Definitions) -> dict[str, str]:
    return {node.key.path[-1]: node.code_version for node in defs.resolve_asset_graph().asset_nodes}


def qdrant_counts(models):
    client = embedded_client(models["qdrant"].path)
    try:
        return client.count("images").count, client.count("crops").count, client
    finally:
        client.close()


def test_clip_embeds_each_image_and_crop_once_per_run(request, monkeypatch):
    embedded = []
    original = ClipEmbedder.embed_images

    def counting(self, images):
        embedded.extend(image.size for image in images)
        return original(self, images)

    monkeypatch.setattr(ClipEmbedder, "embed_images", counting)
    _, run = request.getfixturevalue("pipeline")
    results = request.getfixturevalue("s3_image_store").results
    crops = sum(len(results.read(key, EMBEDDINGS, EmbeddingsRecord).crop_indexes) for key in VALID)
    assert run.success and len(embedded) == len(VALID) + crops


def test_crops_clip_contradicts_are_flagged_shown_in_their_check_and_indexed(request, monkeypatch):
    monkeypatch.setenv("VISION_ASSETS_SECOND_OPINION_MARGIN", "0")  # any disagreement counts
    _, run = request.getfixturevalue("pipeline")
    models, instance = request.getfixturevalue("models"), request.getfixturevalue("instance")
    results = request.getfixturevalue("s3_image_store").results
    records = {key: results.read(key, LABELS, LabelsRecord) for key in VALID}
    flagged = {key for key, record in records.items() if record.disagreements}
    assert flagged, "a random-weight CLIP disagrees with random-weight models somewhere"
    evaluation = batch_check(run, "committee_agrees")
    assert evaluation.severity == dg.AssetCheckSeverity.WARN and not evaluation.passed
    assert failed_in(evaluation) == flagged  # each contradicted image listed, with what CLIP says instead
    table = evaluation.metadata["failed"].value
    assert "CLIP disagrees" in table and "; CLIP: " in table
    assert evaluation.metadata["skipped_count"].value == 1  # corrupt.jpg never reached the stage
    [batch] = run.get_asset_materialization_events()[0:1]
    assert ui_check_statuses(instance, "specialist_labels", "committee_agrees") == {"FAILED": {batch.partition}}
    assert evaluation.metadata["total_crops_audited"].value == sum(len(r.crops) for r in records.values())
    client = embedded_client(models["qdrant"].path)
    try:
        crops, _ = client.scroll("crops", limit=100, with_payload=True)
        for point in crops:
            payload = point.payload
            crop = records[payload["image_id"]].crops[payload["detection_index"]]
            assert payload["clip_disagrees"] == crop.second_opinion.needs_review
            assert payload["second_opinion"]["entity"]["clip"] == crop.second_opinion.detector.clip
            if crop.second_opinion.needs_review:
                assert payload["needs_review"] and set(crop.second_opinion.disagreements) <= set(payload["review_reasons"])
        images, _ = client.scroll("images", limit=10, with_payload=True)
        assert {p.payload["image_id"] for p in images if p.payload["clip_disagrees"]} == flagged
        assert all(set(p.payload["scene_scores"]) <= set(DEFAULT_SCENES) for p in images)
    finally:
        client.close()


def test_a_rerun_overwrites_points_instead_of_adding(pipeline, models):
    driver, run = pipeline
    before = qdrant_counts(models)[:2]
    again = driver.defs.resolve_job_def("process_images").execute_in_process(
        instance=driver.instance, tags=run.dagster_run.tags, raise_on_error=False
    )
    assert again.success
    assert qdrant_counts(models)[:2] == before


def test_an_image_that_becomes_invalid_leaves_the_index(pipeline, models, s3_client, bucket):
    driver, _ = pipeline
    s3_client.put_object(Bucket=bucket, Key="uploads/plain.png", Body=b"now it is garbage")
    [rerun] = driver.tick_and_run()
    assert rerun.success
    client = embedded_client(models["qdrant"].path)
    try:
        assert client.retrieve("images", [image_point_id("plain.png")]) == []
        assert client.count("images").count == 2
    finally:
        client.close()


def test_changing_a_model_changes_the_code_versions_that_depend_on_it(
    pipeline, offline_models, tmp_path, monkeypatch, s3_image_store
):
    driver, _ = pipeline
    old = code_versions(driver.defs)
    other_detector = tmp_path / "other-detector.pt"
    shutil.copy(offline_models / "ultralytics" / "yolov8n.pt", other_detector)
    monkeypatch.setenv("VISION_ASSETS_DETECTOR_MODEL", str(other_detector))
    new_defs = build_definitions(s3_image_store, model_resources_from(Settings.from_env()))
    new = code_versions(new_defs)
    assert str(other_detector) in new["detections"]
    assert new["detections"] != old["detections"]
    assert new["embeddings"] == old["embeddings"] and new["source_images"] == old["source_images"]
    latest = driver.instance.get_latest_materialization_event(dg.AssetKey("detections"))
    assert latest.dagster_event.step_materialization_data.materialization.tags["dagster/code_version"] == old["detections"]


def test_an_image_the_detector_raises_on_fails_alone_and_its_check_says_why(request, monkeypatch):
    """The router raising on one picture (as a model that cannot take it does): the run succeeds, the rest of the
    batch is indexed, and `embeddings_valid` lists that image with the detector's error; it is not indexed."""
    original = YoloDetector.detect

    def refusing_small(self, images):
        if any(image.width < 100 for image in images):  # plain.png, 96 x 64
            raise ValueError("cannot take this picture")
        return original(self, images)

    monkeypatch.setattr(YoloDetector, "detect", refusing_small)
    _, run = request.getfixturevalue("pipeline")
    models, results = request.getfixturevalue("models"), request.getfixturevalue("s3_image_store").results
    assert run.success
    valid = batch_check(run, "embeddings_valid")
    assert not valid.passed and failed_in(valid) == {"plain.png"}
    assert "the detector failed on this image: ValueError: cannot take this picture" in valid.metadata["failed"].value
    assert results.read("plain.png", EMBEDDINGS, EmbeddingsRecord).problems
    images, _, client = qdrant_counts(models)
    assert images == len(VALID) - 1  # the two photos indexed, the failed picture not
