"""`source_images` in real Dagster runs: a batch of good and bad images, per-image outcomes visible."""

import io
import shutil

import dagster as dg
import pytest
from PIL import Image

from dagster_aws.s3 import S3Resource

from tests.conftest import CORPUS, SensorDriver, corpus_files, image_bytes, phone_photo_bytes, ui_check_statuses
from tests.vision.images.test_validation import png_header_only
from vision_assets.checks.validation import SOURCE_IMAGES, image_validity
from vision_assets.definitions import build_definitions
from vision_assets.resources import LocalImageStore, ReviewSettings, S3ImageStore, StagePolicy, UploadPolicy
from vision_assets.vision.partition_keys import partition_key_for

GOOD = {
    "good.jpg": image_bytes((120, 90), fmt="JPEG"),
    "good transparent.png": image_bytes((64, 64), mode="RGBA", color=(0, 0, 0, 0)),
    "actually-a-png.jpg": image_bytes((50, 50), fmt="PNG"),
    "IMG_0042.HEIC": phone_photo_bytes((160, 120), orientation=6),  # an iPhone photo, taken upright
}
PER_IMAGE_CHECK, BATCH_CHECK = image_validity.name, image_validity.batch_name
BAD = {
    "zero.jpg": (b"", "empty"),
    "truncated.jpg": (image_bytes((300, 300), fmt="JPEG")[:900], "corrupt"),
    "notes.jpg": (b"these are my notes, not a picture\n", "not_an_image"),
    "bomb.png": (png_header_only(40_000, 40_000), "too_many_pixels"),
    "tiny.png": (image_bytes((8, 8)), "too_small"),
}


def check_status_by_partition(instance, check_name):
    info = instance.event_log_storage.get_asset_check_partition_info([dg.AssetCheckKey(SOURCE_IMAGES, check_name)])
    return {row.partition_key: row.latest_execution_status.value for row in info}


@pytest.fixture
def batch_run(models, s3_image_store, instance, s3_client, bucket):
    for name, data in GOOD.items():
        s3_client.put_object(Bucket=bucket, Key=f"uploads/{name}", Body=data)
    for name, (data, _) in BAD.items():
        s3_client.put_object(Bucket=bucket, Key=f"uploads/{name}", Body=data)
    driver = SensorDriver(build_definitions(s3_image_store, models), instance)
    [run] = driver.tick_and_run()
    return run


def test_a_batch_with_bad_images_succeeds_and_every_image_is_accounted_for(batch_run, s3_image_store):
    assert batch_run.success, "a bad image must never fail the batch"
    keys = {partition_key_for(n) for n in [*GOOD, *BAD]}
    materialized = {e.partition for e in batch_run.get_asset_materialization_events()}
    assert materialized == keys
    for name in GOOD:
        record = s3_image_store.results.read_source_record(partition_key_for(name))
        assert record.is_valid and record.sha256 and record.facts.phash
        _, normalized = s3_image_store.objects.get(record.normalized_key)
        assert Image.open(io.BytesIO(normalized)).mode == "RGB"
    for name, (_, code) in BAD.items():
        record = s3_image_store.results.read_source_record(partition_key_for(name))
        assert record.status == "rejected" and record.rejection.code.value == code, name


def test_a_phone_photo_is_registered_upright_with_when_and_where(batch_run, s3_image_store):
    record = s3_image_store.results.read_source_record(partition_key_for("IMG_0042.HEIC"))
    assert record.is_valid and record.facts.format == "HEIF"
    assert (record.normalized_width, record.normalized_height) == (120, 160)
    _, normalized = s3_image_store.objects.get(record.normalized_key)
    assert Image.open(io.BytesIO(normalized)).size == (120, 160)
    capture = record.facts.capture
    assert capture.taken_at.isoformat() == "2026-07-14T09:30:05+02:00" and capture.camera == "Apple iPhone 15 Pro"
    assert round(capture.latitude, 4) == 52.3701 and round(capture.longitude, 4) == 4.8917


def test_per_image_metadata_is_per_partition(batch_run):
    metadata = {e.partition: e.materialization.metadata for e in batch_run.get_asset_materialization_events()}
    good = metadata["good.jpg"]
    assert good["status"].value == "valid" and good["dimensions"].value == "120x90"
    assert good["format"].value == "JPEG" and len(good["sha256"].value) == 64 and good["phash"].value
    assert metadata["actually-a-png.jpg"]["format"].value == "PNG"  # magic bytes, not the extension
    assert metadata["truncated.jpg"]["rejection"].value == "corrupt"
    for per_image in metadata.values():  # the batch's figures are the run's, not every image's
        assert not any(label.startswith("batch_") for label in per_image)


def test_batch_check_fails_names_each_rejected_image_and_carries_the_batch_figures(batch_run):
    [batch] = [e for e in batch_run.get_asset_check_evaluations() if e.check_name == BATCH_CHECK]
    assert not batch.passed and batch.severity == dg.AssetCheckSeverity.ERROR
    assert batch.description == f"{len(BAD)} of {len(GOOD) + len(BAD)} images rejected"
    failed = batch.metadata["failed"].value
    assert set(failed) == {partition_key_for(n) for n in BAD}
    assert failed["zero.jpg"] == "rejected (empty): the object is empty (0 bytes)"
    assert "truncated.jpg" in batch.metadata["failed_table"].value
    assert batch.metadata["batch_valid"].value == len(GOOD) and batch.metadata["batch_seconds"].value > 0


def test_per_image_check_status_is_recorded_per_partition(batch_run, instance):
    statuses = check_status_by_partition(instance, PER_IMAGE_CHECK)
    for name in GOOD:
        assert statuses[partition_key_for(name)] == "SUCCEEDED"
    for name in BAD:
        assert statuses[partition_key_for(name)] == "FAILED"
    history = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(SOURCE_IMAGES, PER_IMAGE_CHECK), limit=100
    )
    [notes] = [h for h in history if h.partition == "notes.jpg"]
    evaluation = notes.event.dagster_event.event_specific_data  # what the UI shows for that image
    assert not evaluation.passed and "not an image" in evaluation.description
    # every per-image line of the run log names its image: the UI shows the metadata, the terminal the description
    assert evaluation.metadata["image"].value == "notes.jpg" and evaluation.description.startswith("notes.jpg: ")
    assert evaluation.metadata["reason"].value == "not_an_image"


def test_the_ui_lists_every_image_as_passed_or_failed(batch_run, instance):
    """The Checks -> Partitions view: no image "Missing", and "Failed" is exactly the rejected images."""
    assert ui_check_statuses(instance, "source_images", PER_IMAGE_CHECK) == {
        "SUCCEEDED": {partition_key_for(n) for n in GOOD},
        "FAILED": {partition_key_for(n) for n in BAD},
    }


def test_a_rejected_file_shows_what_still_decodes(batch_run, instance):
    history = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(SOURCE_IMAGES, PER_IMAGE_CHECK), limit=100
    )
    metadata = {h.partition: h.event.dagster_event.event_specific_data.metadata for h in history}
    for previewed in ("truncated.jpg", "tiny.png"):  # a broken JPEG shows its top; a small image is still a picture
        assert metadata[previewed]["preview"].value.startswith("![what still decodes of")
        assert "data:image/jpeg;base64," in metadata[previewed]["preview"].value
    for unshown in ("zero.jpg", "notes.jpg", "bomb.png"):  # nothing to show, and a bomb is never decoded
        assert "preview" not in metadata[unshown]


def test_pictures_can_be_turned_off(models, s3_image_store, instance, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="uploads/truncated.jpg", Body=BAD["truncated.jpg"][0])
    defs = build_definitions(s3_image_store, models, review=ReviewSettings(pictures=False))
    [run] = SensorDriver(defs, instance).tick_and_run()
    [evaluation] = [e for e in run.get_asset_check_evaluations() if e.check_name == PER_IMAGE_CHECK]
    assert not evaluation.passed and "preview" not in evaluation.metadata
    assert s3_image_store.results.read_source_record("truncated.jpg").preview_key is None


def test_an_image_processed_again_gets_a_new_result(models, batch_run, s3_image_store, instance, s3_client, bucket):
    """A re-upload (or a backfill) processes a partition a second time: its per-image result must be recorded
    again, not collide with the first."""
    driver = SensorDriver(build_definitions(s3_image_store, models), instance)
    assert driver.tick().run_requests == []  # a restarted sensor: everything so far is processed
    s3_client.put_object(Bucket=bucket, Key="uploads/truncated.jpg", Body=GOOD["good.jpg"])  # fixed by the user
    runs = driver.tick_and_run()
    assert runs and all(r.success for r in runs)
    assert check_status_by_partition(instance, PER_IMAGE_CHECK)["truncated.jpg"] == "SUCCEEDED"
    history = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(SOURCE_IMAGES, PER_IMAGE_CHECK), limit=100
    )
    assert [h.status.value for h in history if h.partition == "truncated.jpg"] == ["SUCCEEDED", "FAILED"]


def test_rerunning_one_image_replaces_only_its_result(models, batch_run, s3_image_store, instance):
    """Re-running one image (a one-partition run, as the UI launches it) judges that image again; every other
    image keeps its status in the UI."""
    before = ui_check_statuses(instance, "source_images", PER_IMAGE_CHECK)
    defs = build_definitions(s3_image_store, models)
    again = defs.resolve_job_def("process_images").execute_in_process(
        instance=instance, partition_key="truncated.jpg", asset_selection=[SOURCE_IMAGES]
    )
    assert again.success
    [evaluation] = [e for e in again.get_asset_check_evaluations() if e.check_name == PER_IMAGE_CHECK]
    assert evaluation.partition == "truncated.jpg" and not evaluation.passed
    assert ui_check_statuses(instance, "source_images", PER_IMAGE_CHECK) == before


def test_batched_runs_attribute_every_per_image_result_to_its_partition(batch_run):
    # The per-image check is part of the asset, not a step of its own: a step would add one result for the whole
    # range, attributed to no partition.
    evaluations = batch_run.get_asset_check_evaluations()
    per_image = [e.partition for e in evaluations if e.check_name == PER_IMAGE_CHECK]
    assert sorted(per_image) == sorted(partition_key_for(n) for n in [*GOOD, *BAD])
    assert [e.partition for e in evaluations if e.check_name == BATCH_CHECK] == [None]


def test_object_deleted_after_registration_is_rejected_not_crashed(models, s3_image_store, instance, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="uploads/gone.jpg", Body=GOOD["good.jpg"])
    s3_client.put_object(Bucket=bucket, Key="uploads/kept.jpg", Body=GOOD["good.jpg"])
    driver = SensorDriver(build_definitions(s3_image_store, models), instance)
    [request] = driver.tick().run_requests
    s3_client.delete_object(Bucket=bucket, Key="uploads/gone.jpg")
    assert driver.run(request).success
    assert s3_image_store.results.read_source_record("gone.jpg").rejection.code.value == "missing_object"
    assert s3_image_store.results.read_source_record("kept.jpg").is_valid


def test_a_partition_added_by_hand_is_rejected_as_unregistered(models, s3_image_store, instance):
    defs = build_definitions(s3_image_store, models)
    instance.add_dynamic_partitions("images", ["made-up.jpg"])
    result = defs.resolve_job_def("process_images").execute_in_process(instance=instance, partition_key="made-up.jpg")
    assert result.success
    assert s3_image_store.results.read_source_record("made-up.jpg").rejection.code.value == "unregistered"
    assert check_status_by_partition(instance, PER_IMAGE_CHECK)["made-up.jpg"] == "FAILED"


def test_unreachable_store_is_retried_then_fails_loudly_and_is_left_to_run_retries(models, instance):
    dead = S3ImageStore(
        s3=S3Resource(endpoint_url="http://127.0.0.1:9", region_name="us-east-1", max_attempts=1),
        bucket="b",
        results_prefix="results/",
    )
    instance.add_dynamic_partitions("images", ["a.jpg"])
    policy = StagePolicy(retries=2, first_retry_seconds=0)
    result = build_definitions(dead, models, stage_policy=policy).resolve_job_def("process_images").execute_in_process(
        instance=instance, partition_key="a.jpg", raise_on_error=False
    )
    assert not result.success
    kinds = [e.event_type_value for e in result.all_events]
    assert kinds.count("STEP_UP_FOR_RETRY") == 2
    # A fault that waiting heals: the run stays eligible for Dagster's run retries (a bug would make it ineligible).
    assert "dagster/retry_on_asset_or_op_failure" not in instance.get_run_by_id(result.run_id).tags
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "store unreachable" in str(failure.event_specific_data.error.message).lower() or "127.0.0.1:9" in str(
        failure.event_specific_data.error.to_string()
    )


@pytest.mark.timeout(300)
def test_the_whole_corpus_goes_through_one_run(models, local_image_store, instance, tmp_path):
    """Pillow's 743 test images as a user's bucket: one batch, every file valid or rejected with a reason."""
    files = corpus_files()
    shutil.copytree(CORPUS, tmp_path / "bucket" / "pillow")
    every_object = LocalImageStore(root=local_image_store.root, results_prefix="results/", settle_seconds=0,
                                   image_extensions=[])  # every object, whatever its extension
    driver = SensorDriver(build_definitions(every_object, models, UploadPolicy(batch_size=1000)), instance)
    runs = driver.tick_and_run()
    assert len(runs) == 1 and runs[0].success
    assert len(driver.partitions) == len(files)
    statuses = {"valid": 0, "rejected": 0}
    for key in driver.partitions:
        record = every_object.results.read_source_record(key)
        assert record is not None, key
        statuses[record.status] += 1
        if record.rejection:
            assert record.rejection.message.strip()
    assert statuses["valid"] > 500 and statuses["rejected"] > 100
