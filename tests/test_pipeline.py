"""The whole committee in one batched run: router, experts, generalist, index; real model classes (tiny random
weights), a real S3 endpoint, embedded Qdrant."""

import shutil

import dagster as dg

from tests.conftest import PIPELINE_VALID as VALID, embedded_client
from tests.conftest import ui_check_statuses
from vision_assets.definitions import build_definitions, model_resources_from
from vision_assets.settings import Settings
from vision_assets.vision.index.vector_index import image_point_id
from vision_assets.vision.committee.scenes import DEFAULT_SCENES
from vision_assets.vision.models.embedder import ClipEmbedder
from vision_assets.vision.records import DetectionsRecord, EmbeddingsRecord, LabelsRecord
from vision_assets.vision.storage.results_store import DETECTIONS, EMBEDDINGS, LABELS

STAGES = ["source_images", "detections", "embeddings", "specialist_labels", "qdrant_index"]


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


def test_crops_clip_contradicts_are_flagged_shown_in_their_check_and_indexed(request, monkeypatch):
    monkeypatch.setenv("VISION_ASSETS_SECOND_OPINION_MARGIN", "0")  # any disagreement counts
    _, run = request.getfixturevalue("pipeline")
    models, instance = request.getfixturevalue("models"), request.getfixturevalue("instance")
    results = request.getfixturevalue("s3_image_store").results
    records = {key: results.read(key, LABELS, LabelsRecord) for key in VALID}
    flagged = {key for key, record in records.items() if record.disagreements}
    assert flagged, "a random-weight CLIP disagrees with random-weight models somewhere"
    evaluations = {e.partition: e for e in run.get_asset_check_evaluations() if e.check_name == "committee_agrees"}
    assert set(evaluations) == set(VALID)
    for key, evaluation in evaluations.items():
        assert evaluation.passed == (key not in flagged) and evaluation.severity == dg.AssetCheckSeverity.WARN
        if key in flagged:
            assert "CLIP disagrees" in evaluation.description and "; CLIP: " in evaluation.description
    statuses = ui_check_statuses(instance, "specialist_labels", "committee_agrees")
    assert statuses.get("FAILED", set()) == flagged and statuses["SKIPPED"] == {"corrupt.jpg"}
    summary = batch_check(run, "committee_agreed")
    assert summary.metadata["batch_crops_audited"].value == sum(len(r.crops) for r in records.values())
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
