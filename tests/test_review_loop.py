"""The review loop in real Dagster runs over moto's S3 and the embedded index: Label Studio tasks written for the
images that need a person, an annotation in Label Studio's own target-storage format read back by `review_sensor`,
the human answer in Qdrant and the label checks Passed "reviewed" in the UI's check view, kept through a re-run,
and measured by `review_accuracy`.

The annotation files here are written in the format Label Studio 1.23's S3 target storage writes (its
`StorageAnnotationSerializer`: the annotation with its task nested), built from the task this project exported;
tests/vision/review covers the other format and the corrections JSON."""

import json

import pytest

from tests.conftest import SensorDriver, embedded_client, failed_in, latest_evaluation, requested, ui_check_statuses
from tests.vision.review.test_review_formats import annotated
from vision_assets.assets.specialist_labels import committee_agreement, label_confidence
from vision_assets.jobs import PROCESS_IMAGES
from vision_assets.sensors import review_sensor as review_sensor_module
from vision_assets.vision.index.vector_index import crop_point_id, image_point_id
from vision_assets.vision.records import DetectionsRecord, ImageReview, LabelsRecord, Verdict
from vision_assets.vision.review.decisions import apply_review, outstanding_disagreements, outstanding_review
from vision_assets.vision.storage.results_store import DETECTIONS, LABELS, REVIEW

pytestmark = pytest.mark.slow  # see docs/testing.md: `uv run pytest -m "not slow"` leaves it out


def tasks_in(s3_client, bucket) -> dict[str, dict]:
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="results/~review/tasks/").get("Contents", [])
    return {o["Key"].removeprefix("results/~review/tasks/").removesuffix(".json"):
            json.loads(s3_client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()) for o in listed}


def payload(models, collection: str, point: str) -> dict | None:
    client = embedded_client(models["qdrant"].path)
    try:
        found = client.retrieve(collection, [point], with_payload=True)
        return found[0].payload if found else None
    finally:
        client.close()


def test_a_verdict_from_label_studio_reaches_the_index_and_the_checks(pipeline, models, s3_image_store, instance,
                                                                      s3_client, bucket):
    driver, _ = pipeline
    [batch] = driver.batches
    tasks = tasks_in(s3_client, bucket)
    failing = failed_in(latest_evaluation(instance, "specialist_labels", label_confidence.name)) | \
        failed_in(latest_evaluation(instance, "specialist_labels", committee_agreement.name))
    assert failing and failing <= set(tasks), "every image that needs review has a task"
    task = tasks["bus.jpg"]
    assert task["data"]["image"] == f"s3://{bucket}/results/bus.jpg/~normalized.jpg"
    detections = s3_image_store.results.read("bus.jpg", DETECTIONS, DetectionsRecord)
    assert len(detections.detections) >= 3

    # The reviewer keeps d0, relabels d1, deletes every other box and draws one; Label Studio syncs it to S3.
    d1_expert = next((r for r in task["predictions"][0]["result"] if r["id"] == "d1" and r["type"] == "choices"), None)
    drawn = {"id": "xyz", "from_name": "object", "to_name": "image", "type": "rectanglelabels",
             "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rotation": 0, "rectanglelabels": ["cat"]}}
    body = annotated(task, {"d0": None, "d1": "reviewed label"}, [drawn])
    s3_client.put_object(Bucket=bucket, Key="results/~review/annotations/17", Body=body)
    s3_client.put_object(Bucket=bucket, Key="results/~review/annotations/18", Body=b"{oops")

    reviews = SensorDriver(driver.defs, instance, sensor="review_sensor")
    [request] = requested(reviews.tick(), "apply_reviews")
    assert request.run_config["ops"]["review_decisions"]["config"]["images"] == ["bus.jpg"]
    applied_run = reviews.run(request)
    assert applied_run.success
    [applied_event] = applied_run.get_asset_materialization_events()
    assert applied_event.materialization.metadata["applied"].value == 1
    stored = s3_image_store.results.read("bus.jpg", REVIEW, ImageReview)
    verdicts = [d.verdict for d in stored.boxes]
    assert verdicts.count(Verdict.REJECTED) == len(detections.detections) - 2 and Verdict.ADDED in verdicts
    assert stored.reviewer == "ana@zoo.org"

    # The index: the human answer, the model's beside it, rejected boxes gone, the drawn box on the image.
    d1 = payload(models, "crops", crop_point_id("bus.jpg", 1))
    assert d1["reviewed"] is True and d1["needs_review"] is False and d1["review"]["reviewer"] == "ana@zoo.org"
    if d1_expert:
        assert d1["label"] == "reviewed label" and d1["label_confidence"] == 1.0
        assert d1["review"]["model_label"] == d1_expert["value"]["choices"][0]
    assert payload(models, "crops", crop_point_id("bus.jpg", 2)) is None
    image = payload(models, "images", image_point_id("bus.jpg"))
    assert image["reviewed"] is True and image["added_objects"][0]["entity"] == "cat" and "cat" in image["entity"]

    # The batch's checks judged again, against specialist_labels' latest materialization (the UI counts them as
    # current): bus.jpg no longer among the images that need review.
    for check in (label_confidence, committee_agreement):
        evaluation = latest_evaluation(instance, "specialist_labels", check.name)
        assert evaluation.partition == batch and "bus.jpg" not in failed_in(evaluation), check.name
        assert set().union(*ui_check_statuses(instance, "specialist_labels", check.name).values()) == {batch}
    assert latest_evaluation(instance, "specialist_labels", label_confidence.name).metadata[
        "total_reviewed"].value == 1

    # Processed again (a re-upload of the same bytes, or a new model). The random-weight router here answers a
    # one-image batch differently from a four-image one (letterboxing): some boxes are the reviewed ones, a little
    # shifted or reordered, some are new. The decisions follow the objects they were made on; what nobody judged
    # is open again, and only that.
    rerun = driver.defs.resolve_job_def(PROCESS_IMAGES).execute_in_process(
        instance=instance, partition_key=batch, raise_on_error=False,
        run_config={"resources": {"image_selection": {"config": {"images": ["bus.jpg"]}}}})
    assert rerun.success
    now = s3_image_store.results.read("bus.jpg", DETECTIONS, DetectionsRecord)
    applied = apply_review(stored, stored.sha256, now)
    assert applied.by_detection, "the reviewed objects are found again"
    labels = s3_image_store.results.read("bus.jpg", LABELS, LabelsRecord)
    open_again = outstanding_review(labels, applied)
    assert all(f"crop {i} " not in " ".join(open_again) for i in applied.by_detection)
    assert ("bus.jpg" in failed_in(latest_evaluation(instance, "specialist_labels", label_confidence.name))) == \
        bool(open_again)
    assert ("bus.jpg" in tasks_in(s3_client, bucket)) == bool(open_again or outstanding_disagreements(labels, applied))
    for index, decision in applied.by_detection.items():
        point = payload(models, "crops", crop_point_id("bus.jpg", index))
        if decision.verdict == Verdict.REJECTED:
            assert point is None
        else:
            assert point["reviewed"] is True and point["entity"] == decision.entity

    # The next tick: the unreadable file was named once; accuracy is measured now the review run is done.
    [accuracy] = requested(reviews.tick(), "measure_accuracy")
    measured = reviews.run(accuracy)
    assert measured.success
    [materialization] = measured.get_asset_materialization_events()
    metadata = materialization.materialization.metadata
    assert metadata["reviewed_images"].value == 1 and metadata["missed_boxes"].value == 1
    assert metadata["router_precision"].value == round(2 / len(detections.detections), 4)
    assert "data:image/png;base64," in metadata["plot"].value
    assert not requested(reviews.tick(), "measure_accuracy")


def test_our_corrections_json_and_a_file_about_an_unknown_image(pipeline, models, s3_image_store, instance,
                                                               s3_client, bucket, monkeypatch):
    driver, _ = pipeline
    s3_client.put_object(Bucket=bucket, Key="results/~review/corrections/batch-1.json", Body=json.dumps([
        {"image": "zidane.jpg", "reviewer": "bo", "decisions": [{"box": 0, "verdict": "corrected", "entity": "dog"}]},
        {"image": "nobody.jpg", "reviewer": "bo", "decisions": [{"box": 0, "verdict": "accepted"}]},
    ]).encode())
    reviews = SensorDriver(driver.defs, instance, sensor="review_sensor")
    result = reviews.tick()
    # The file's first entry names an image we have, its second one we don't: nothing from it is half-applied.
    assert not requested(result, "apply_reviews")
    s3_client.put_object(Bucket=bucket, Key="results/~review/corrections/batch-2.json", Body=json.dumps(
        {"image": "zidane.jpg", "reviewer": "bo", "decisions": [{"box": 0, "verdict": "corrected", "entity": "dog"}]}
    ).encode())
    [request] = requested(reviews.tick(), "apply_reviews")
    assert reviews.run(request).success
    point = payload(models, "crops", crop_point_id("zidane.jpg", 0))
    assert point["entity"] == "dog" and point["review"]["verdict"] == "corrected" and point["reviewed"] is True

    # The folders are inboxes: the tick after the one that read a file moves it out (refused or applied), so a
    # tick lists only what is new; a file rewritten in between stays and is read again.
    def keys(prefix: str) -> list[str]:
        listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=f"results/~review/{prefix}").get("Contents", [])
        return [o["Key"].removeprefix(f"results/~review/{prefix}") for o in listed]

    assert keys("refused/") == ["corrections/batch-1.json"] and keys("corrections/") == ["batch-2.json"]
    s3_client.put_object(Bucket=bucket, Key="results/~review/corrections/batch-2.json", Body=json.dumps(
        {"image": "zidane.jpg", "reviewer": "bo", "decisions": [{"box": 0, "verdict": "corrected", "entity": "cat"}]}
    ).encode())
    [again] = requested(reviews.tick(), "apply_reviews")  # the rewritten file, read again
    assert keys("corrections/") == ["batch-2.json"] and keys("applied/") == []
    assert not requested(reviews.tick(), "apply_reviews")  # moved out now: nothing new
    assert keys("corrections/") == [] and keys("applied/") == ["corrections/batch-2.json"]
    monkeypatch.setattr(review_sensor_module, "FILES_PER_TICK", 1)
    for name in ("c.json", "d.json"):
        s3_client.put_object(Bucket=bucket, Key=f"results/~review/corrections/{name}", Body=json.dumps(
            {"image": "zidane.jpg", "reviewer": "bo", "decisions": [{"box": 0, "verdict": "accepted"}]}).encode())
    assert [len(requested(reviews.tick(), "apply_reviews")) for _ in range(3)] == [1, 1, 0]
    assert keys("applied/") == ["corrections/batch-2.json", "corrections/c.json", "corrections/d.json"]


def test_the_label_studio_config_names_the_models_vocabularies(models, capsys):
    from vision_assets.cli import main

    assert main(["review-config"]) == 0
    config = capsys.readouterr().out
    assert '<RectangleLabels name="object" toName="image">' in config and "<Label value=\"person\"/>" in config
    assert config.count("<Choice value=") > 100  # the dog, cat, coral and wildlife vocabularies


def test_the_review_queue_lists_what_needs_a_person_with_pictures_and_links(pipeline, instance):
    driver, _ = pipeline
    [batch] = driver.batches
    reviews = SensorDriver(driver.defs, instance, sensor="review_sensor")
    [refresh] = requested(reviews.tick(), "refresh_review_queue")  # the pipeline's run changed the index
    run = reviews.run(refresh)
    assert run.success
    [event] = run.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["crops_needing_review"] > 0 and metadata["images_needing_review"] > 0
    table = metadata["top_images"]
    assert "data:image/jpeg;base64," in table and "~review/tasks/" in table
    assert f"(/assets/specialist_labels?view=partitions&partition={batch.replace(':', '%3A')})" in table
    assert not requested(reviews.tick(), "refresh_review_queue")  # nothing changed since: no run


def test_verdicts_on_many_images_apply_in_one_run_that_lets_indexing_in_between(pipeline, models, instance,
                                                                                s3_client, bucket, monkeypatch):
    """A tick's verdicts, however many images, are one run; between chunks it lets go of the embedded index for
    longer than a waiting run polls, so an upload run's `qdrant_index` is not kept waiting behind a long review."""
    import threading
    import time

    from vision_assets.assets import review_decisions as module

    driver, _ = pipeline
    entries = [{"image": key, "reviewer": "bo", "decisions": [{"box": 0, "verdict": "accepted"}]}
               for key in ("bus.jpg", "zidane.jpg")]
    s3_client.put_object(Bucket=bucket, Key="results/~review/corrections/many.json", Body=json.dumps(entries).encode())
    reviews = SensorDriver(driver.defs, instance, sensor="review_sensor")
    [request] = requested(reviews.tick(), "apply_reviews")
    assert sorted(request.run_config["ops"]["review_decisions"]["config"]["images"]) == ["bus.jpg", "zidane.jpg"]

    real_write = module.write_points
    events: list[str] = []

    def an_indexing_run_arrives():
        with models["qdrant"].open(wait_seconds=60):
            events.append("indexing run")

    other = threading.Thread(target=an_indexing_run_arrives)

    def slow_write(*args, **kwargs):  # each chunk holds the index for a second
        events.append("chunk")
        if not other.is_alive() and len(events) == 1:
            other.start()  # arrives while the first chunk holds the index
        time.sleep(1.0)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(module, "CHUNK_IMAGES", 1)
    monkeypatch.setattr(module, "write_points", slow_write)
    assert reviews.run(request).success
    other.join()
    # It got its turn between the two chunks, not after the whole run (an order, not a timing: no flake when busy).
    assert events == ["chunk", "indexing run", "chunk"]
    for key in ("bus.jpg", "zidane.jpg"):
        assert payload(models, "crops", crop_point_id(key, 0))["reviewed"] is True


def test_a_big_corrections_file_is_applied_a_slice_a_tick_and_no_entry_twice(pipeline, instance, s3_client, bucket,
                                                                             monkeypatch, capfd):
    """A corrections file of 100,000 entries used to be one tick past Dagster's 60 s sensor timeout. It is applied
    ENTRIES_PER_TICK entries a tick (here 2 of 5), each slice one run, its progress in the cursor and the tick's log;
    the tick that applied a slice, evaluated again (the daemon died before storing it), asks for the same run, and
    the file leaves the inbox after its last slice."""
    monkeypatch.setattr(review_sensor_module, "ENTRIES_PER_TICK", 2)
    driver, _ = pipeline
    keys = ["bus.jpg", "zidane.jpg"]
    entries = [{"image": keys[n % 2], "reviewer": f"r{n}", "decisions": [{"box": 0, "verdict": "accepted"}]}
               for n in range(5)]
    s3_client.put_object(Bucket=bucket, Key="results/~review/corrections/big.json", Body=json.dumps(entries).encode())
    reviews = SensorDriver(driver.defs, instance, sensor="review_sensor")
    capfd.readouterr()
    assert not requested(reviews.tick(), "apply_reviews")  # found; applied from the next tick on
    slices, logs = [], []
    for _ in range(3):
        before = reviews.cursor
        [request] = requested(reviews.tick(), "apply_reviews")
        again = SensorDriver(driver.defs, instance, sensor="review_sensor")
        again.cursor = before
        [same] = requested(again.tick(), "apply_reviews")
        assert same.run_key == request.run_key  # evaluated again: the same slice, one run
        slices.append(request)
        logs.append(capfd.readouterr())
    images = [sorted(r.run_config["ops"]["review_decisions"]["config"]["images"]) for r in slices]
    assert images == [keys, keys, ["bus.jpg"]]
    assert len({r.run_key for r in slices}) == 3
    said = "".join(log.out + log.err for log in logs)
    for progress in ("entries 1-2 of 5 applied (40%)", "entries 3-4 of 5 applied (80%)", "entries 5-5 of 5 applied"):
        assert progress in said, said
    reviews.tick()  # moves the finished file out of the inbox
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix="results/~review/").get("Contents", [])
    assert [o["Key"] for o in listed if "big.json" in o["Key"]] == ["results/~review/applied/corrections/big.json"]
