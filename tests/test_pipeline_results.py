"""What one batched run of the whole committee leaves behind, read by every test of this module from one shared
batch (tests/conftest.py `shared_pipeline`): each stage once, models loaded once, results, points, check
statuses, pictures. Tests that change the batch (re-runs, re-uploads, model changes) are in test_pipeline.py."""

import dagster as dg

from tests.conftest import PIPELINE_VALID as VALID, embedded_client, shared_batch_fixtures, ui_check_statuses
from tests.test_pipeline import STAGES, batch_check, qdrant_counts
from vision_assets.vision.committee.scenes import DEFAULT_SCENES
from vision_assets.vision.index.vector_index import image_point_id
from vision_assets.vision.records import DetectionsRecord, EmbeddingsRecord, LabelsRecord
from vision_assets.vision.storage.results_store import DETECTIONS, EMBEDDINGS, LABELS


models, pipeline, s3_image_store, instance, bucket = shared_batch_fixtures()


def test_every_stage_runs_once_for_the_batch(pipeline):
    driver, run = pipeline
    assert run.success
    by_asset = {}
    for event in run.get_asset_materialization_events():
        by_asset.setdefault(event.asset_key.path[-1], {})[event.partition] = event.materialization.metadata
    assert set(by_asset) == set(STAGES)
    for stage in STAGES[1:]:
        assert by_asset[stage]["corrupt.jpg"]["status"].value == "skipped"  # a rejected image goes no further
        for key in VALID:
            assert by_asset[stage][key]["status"].value == "done", (stage, key)
        for metadata in by_asset[stage].values():  # batch figures live on the batch check, not on every image
            assert not any(label.startswith("batch_") for label in metadata), stage


def test_models_load_once_per_run(pipeline):
    _, run = pipeline
    # CLIP is used by two stages (the embeddings, then the coral gate and second opinions) and loaded once for both.
    assert batch_check(run, "embeddings_valid").metadata["models_loaded"].value == {"embedder": 1}
    loaded = batch_check(run, "all_labels_confident").metadata["models_loaded"].value
    assert all(count <= 1 for count in loaded.values())


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



def test_every_image_has_a_status_in_the_ui_for_every_check(pipeline, instance):
    """Checks -> Partitions: judged images passed or failed, the rejected one skipped where it never arrived."""
    assert ui_check_statuses(instance, "source_images", "image_valid") == {
        "SUCCEEDED": set(VALID), "FAILED": {"corrupt.jpg"}}
    for asset, check in [("embeddings", "embedding_valid"), ("qdrant_index", "indexed")]:
        assert ui_check_statuses(instance, asset, check) == {"SUCCEEDED": set(VALID), "SKIPPED": {"corrupt.jpg"}}
    for check in ("labels_confident", "committee_agrees"):
        labels = ui_check_statuses(instance, "specialist_labels", check)
        assert labels.pop("SKIPPED") == {"corrupt.jpg"}
        assert set(labels) <= {"SUCCEEDED", "FAILED"} and set().union(*labels.values()) == set(VALID)


def test_labels_carry_a_picture_and_review_results_show_the_crops(pipeline, s3_image_store):
    _, run = pipeline
    labels = {e.partition: e.materialization.metadata for e in run.get_asset_materialization_events()
              if e.asset_key.path == ["specialist_labels"]}
    for key in VALID:
        picture = labels[key]["picture"].value
        assert picture.startswith(f"![{key}](data:image/jpeg;base64,")
        record = s3_image_store.results.read(key, LABELS, LabelsRecord)
        assert picture.count("\n| ") == len(record.crops) + 1  # a legend row per object, under the header
    review = [e for e in run.get_asset_check_evaluations() if e.check_name == "labels_confident" and not e.passed]
    assert review, "random-weight experts are never confident: some image must need review"
    for evaluation in review:
        assert evaluation.description.startswith(f"{evaluation.partition}: needs review, ")
        assert evaluation.metadata["review_crops"].value.count("![crop ") >= 1
    summary = batch_check(run, "all_labels_confident")
    assert summary.severity == dg.AssetCheckSeverity.WARN
    assert summary.description.startswith(f"{len(review)} of {len(VALID)} images need review")


