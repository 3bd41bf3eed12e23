"""What one batched run of the whole committee leaves behind, read by every test of this module from one shared
batch (tests/conftest.py `shared_pipeline`): each stage once, models loaded once, results, points, check
statuses, pictures. Tests that change the batch (re-runs, re-uploads, model changes) are in test_pipeline.py."""

from collections import Counter

import dagster as dg
import pytest

from tests.conftest import PIPELINE_VALID as VALID
from tests.conftest import embedded_client, failed_in, shared_batch_fixtures, ui_check_statuses
from tests.test_pipeline import STAGES, qdrant_counts
from vision_assets.vision.committee.scenes import DEFAULT_SCENES
from vision_assets.vision.index.vector_index import image_point_id
from vision_assets.vision.records import DetectionsRecord, EmbeddingsRecord, LabelsRecord
from vision_assets.vision.storage.results_store import DETECTIONS, EMBEDDINGS, LABELS

models, pipeline, s3_image_store, instance, bucket = shared_batch_fixtures()


def test_every_stage_materializes_the_batch_once_with_its_counts(pipeline):
    driver, run = pipeline
    assert run.success
    [batch] = driver.batches
    by_asset = {}
    for event in run.get_asset_materialization_events():
        assert event.partition == batch
        by_asset.setdefault(event.asset_key.path[-1], []).append(event.materialization.metadata)
    assert {asset: len(events) for asset, events in by_asset.items()} == {stage: 1 for stage in STAGES}
    for stage in STAGES[1:]:  # a rejected image goes no further
        [metadata] = by_asset[stage]
        assert (metadata["images"].value, metadata["done"].value, metadata["skipped"].value) == (4, 3, 1), stage


def test_a_batch_says_what_each_model_cost_it(pipeline, s3_image_store):
    """Each model stage's seconds by model, per image in its record and per batch in its metadata; the index's
    metadata sums the batch over every stage (what a backfill of N batches costs is N times that)."""
    driver, run = pipeline
    metadata = {e.asset_key.path[-1]: e.materialization.metadata for e in run.get_asset_materialization_events()}
    results = s3_image_store.results
    per_image = Counter()
    for key in VALID:
        detections, embedded = results.read(key, DETECTIONS, DetectionsRecord), results.read(key, EMBEDDINGS, EmbeddingsRecord)
        labels = results.read_labels(key)
        assert detections.device_seconds["detector"] > 0 and embedded.device_seconds["clip"] > 0
        for record in (detections, embedded, labels):
            per_image.update(record.device_seconds)
    routed = {name for key in VALID for name in results.read_labels(key).device_seconds}
    assert set(metadata["detections"]["device_seconds"].value) == {"detector"}
    assert set(metadata["embeddings"]["device_seconds"].value) == {"clip"}
    assert set(metadata["specialist_labels"]["device_seconds"].value) == routed
    index = metadata["qdrant_index"]
    assert set(index["batch_device_seconds"].value) == {"detector", "clip"} | routed
    for model, seconds in index["batch_device_seconds"].value.items():
        assert seconds == pytest.approx(per_image[model], abs=0.01), model  # the images' records, summed
    total = index["batch_device_seconds_total"].value
    assert total == pytest.approx(sum(per_image.values()), abs=0.02)
    assert index["device_seconds_per_image"].value == pytest.approx(total / len(VALID), abs=0.01)


def test_a_backfill_estimate_scales_what_recent_batches_cost(pipeline, instance):
    from vision_assets.assets.qdrant_index import backfill_estimate

    driver, run = pipeline
    [index] = [e.materialization.metadata for e in run.get_asset_materialization_events()
               if e.asset_key.path[-1] == "qdrant_index"]
    estimate = backfill_estimate(instance, batch_count=1000, devices=4)
    assert (estimate.sampled_batches, estimate.sampled_images, estimate.images) == (1, len(VALID), 1000 * len(VALID))
    for model, seconds in index["batch_device_seconds"].value.items():
        assert estimate.by_model[model] == pytest.approx(1000 * seconds)
    assert estimate.wall_seconds == pytest.approx(estimate.device_seconds / 4)
    assert "on 4 device(s)" in estimate.describe() and "detector" in estimate.describe()
    assert backfill_estimate(instance).images == len(VALID)  # default: every registered batch (one here)


def test_dagster_bookkeeping_is_per_batch_not_per_image(pipeline, instance):
    """The run's events do not grow with its images: one materialization and one check result per stage and batch."""
    _, run = pipeline
    events = instance.get_records_for_run(run.run_id, limit=10_000).records
    kinds = [r.event_log_entry.dagster_event_type for r in events if r.event_log_entry.is_dagster_event]
    assert kinds.count(dg.DagsterEventType.ASSET_MATERIALIZATION) == len(STAGES)
    assert kinds.count(dg.DagsterEventType.ASSET_CHECK_EVALUATION) == 7  # six batch checks and index_complete
    assert len(events) < 80


def test_models_load_once_per_run(pipeline):
    _, run = pipeline
    # CLIP is used by two stages (the embeddings, then the coral gate and second opinions) and loaded once for both.
    [embeddings] = [e for e in run.get_asset_materialization_events() if e.asset_key.path == ["embeddings"]]
    assert embeddings.materialization.metadata["models_loaded"].value == {"embedder": 1}
    [labels] = [e for e in run.get_asset_materialization_events() if e.asset_key.path == ["specialist_labels"]]
    loaded = labels.materialization.metadata["models_loaded"].value
    routed = labels.materialization.metadata["run_crops_per_specialist"].value
    assert routed and all(loaded[expert] == 1 for expert in routed)  # every expert used was loaded, once
    assert loaded["embedder"] == 1 and all(count <= 1 for count in loaded.values())


def test_scene_tags_and_second_opinions_for_each_image(pipeline, models, s3_image_store):
    results = s3_image_store.results
    clip = models["embedder"].identity
    for key in VALID:
        embedded = results.read(key, EMBEDDINGS, EmbeddingsRecord)
        assert set(embedded.scene.scores) == set(DEFAULT_SCENES) and embedded.scene.model == clip
        assert abs(sum(embedded.scene.scores.values()) - 1) < 0.01
        labels = results.read(key, LABELS, LabelsRecord)
        assert labels.coral_scene_score == embedded.scene.scores["coral reef"]  # the gate is one use of the tags
        assert [c.crop_box for c in labels.crops] == embedded.crop_boxes  # the experts saw the crops CLIP saw
        for crop in labels.crops:
            opinion = crop.second_opinion
            assert opinion.model == clip and opinion.detector.said == crop.detection.class_name
            assert (opinion.expert is not None) == (crop.specialist is not None)
            if crop.specialist:
                assert opinion.expert.said == crop.specialist.top.name


def test_results_for_each_image(pipeline, models, s3_image_store):
    results = s3_image_store.results
    for key in VALID:
        detections = results.read(key, DETECTIONS, DetectionsRecord)
        labels = results.read(key, LABELS, LabelsRecord)
        assert detections.detections and len(labels.crops) == len(detections.detections)
        for crop in labels.crops:
            assert crop.crop_box[0] <= crop.detection.box[0] and crop.crop_box[2] >= int(crop.detection.box[2])
            if crop.specialist:
                assert crop.specialist.labels[0].name != "test"  # junk label cleaned by configuration
                # the label names the model that produced it: the routed expert's hub id, at the cached revision
                model_id, _, revision = crop.specialist.model.partition("@")
                assert model_id == models["specialists"].models[crop.specialist.specialist] and len(revision) == 40
        assert labels.coral_scene_score is not None


def test_qdrant_holds_exactly_the_valid_images_and_their_crops(pipeline, models, s3_image_store, instance):
    crops_expected = sum(
        len(s3_image_store.results.read(k, DETECTIONS, DetectionsRecord).detections) for k in VALID
    )
    images, crops, _ = qdrant_counts(models)
    assert (images, crops) == (len(VALID), crops_expected)
    client = embedded_client(models["qdrant"].path)
    try:
        [bus] = client.retrieve("images", [image_point_id("bus.jpg")], with_payload=True, with_vectors=True)
        assert bus.payload["source_uri"].endswith("uploads/bus.jpg") and len(bus.payload["sha256"]) == 64
        assert bus.payload["object_key"] == "uploads/bus.jpg"
        assert bus.payload["embedding_model"] == models["embedder"].identity
        assert bus.payload["detector_model"] == models["detector"].identity
        assert len(bus.vector) == 64  # the tiny CLIP's dimension, taken from the model
        info = client.get_collection("crops")
        assert info.config.params.vectors.distance.value == "Cosine"
        assert {"image_id", "entity", "label", "label_confidence", "needs_review", "taken_at", "location", "camera"} <= set(info.payload_schema)
    finally:
        client.close()



def test_the_batch_has_a_status_in_the_ui_for_every_check(pipeline, instance):
    """Checks -> Partitions: the batch judged by every check, never "Missing"."""
    [batch] = pipeline[0].batches
    assert ui_check_statuses(instance, "source_images", "images_valid") == {"FAILED": {batch}}
    for asset, check in [("embeddings", "embeddings_valid"), ("qdrant_index", "index_consistent")]:
        assert ui_check_statuses(instance, asset, check) == {"SUCCEEDED": {batch}}
    for check in ("labels_confident", "committee_agrees"):
        assert set().union(*ui_check_statuses(instance, "specialist_labels", check).values()) == {batch}


def test_the_label_check_lists_the_images_to_review_with_their_crops(pipeline):
    _, run = pipeline
    [evaluation] = [e for e in run.get_asset_check_evaluations() if e.check_name == "labels_confident"]
    review = failed_in(evaluation)
    assert review and review <= set(VALID), "random-weight experts are never confident: some image must need review"
    assert evaluation.severity == dg.AssetCheckSeverity.WARN and not evaluation.passed
    assert evaluation.description.endswith(f"{len(review)} of {len(VALID)} images need review; 1 skipped")
    assert "needs review, " in evaluation.metadata["failed"].value
    assert evaluation.metadata["pictures"].value.count("![crop ") >= len(review)
    assert evaluation.metadata["total_crops"].value >= len(review)
