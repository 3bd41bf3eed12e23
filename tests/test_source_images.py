"""`source_images` in real Dagster runs: a batch of good and bad images, per-image outcomes visible."""

import io
import shutil

import dagster as dg
import pytest
from PIL import Image

from tests.conftest import CORPUS, SensorDriver, corpus_files, image_bytes, phone_photo_bytes, ui_check_statuses
from tests.vision.images.test_validation import png_header_only
from vision_assets.assets.source_images import image_validity
from vision_assets.keys import SOURCE_IMAGES
from vision_assets.partitions import batches
from vision_assets.resources import (
    LocalImageStore,
    ReviewSettings,
    S3Connection,
    S3ImageStore,
    StagePolicy,
    UploadPolicy,
)
from vision_assets.vision.batches import BatchManifest
from vision_assets.vision.partition_keys import partition_key_for
from vision_assets.wiring import build_definitions

pytestmark = pytest.mark.slow  # see docs/testing.md: `uv run pytest -m "not slow"` leaves it out

GOOD = {
    "good.jpg": image_bytes((120, 90), fmt="JPEG"),
    "good transparent.png": image_bytes((64, 64), mode="RGBA", color=(0, 0, 0, 0)),
    "actually-a-png.jpg": image_bytes((50, 50), fmt="PNG"),
    "IMG_0042.HEIC": phone_photo_bytes((160, 120), orientation=6),  # an iPhone photo, taken upright
}
CHECK = image_validity.name
BAD = {
    "zero.jpg": (b"", "empty"),
    "truncated.jpg": (image_bytes((300, 300), fmt="JPEG")[:900], "corrupt"),
    "notes.jpg": (b"these are my notes, not a picture\n", "not_an_image"),
    "bomb.png": (png_header_only(40_000, 40_000), "too_many_pixels"),
    "tiny.png": (image_bytes((8, 8)), "too_small"),
}


def evaluation_of(run) -> dg.AssetCheckEvaluation:
    [evaluation] = [e for e in run.get_asset_check_evaluations() if e.check_name == CHECK]
    return evaluation


@pytest.fixture
def batch_run(models, s3_image_store, instance, s3_client, bucket):
    for name, data in GOOD.items():
        s3_client.put_object(Bucket=bucket, Key=f"uploads/{name}", Body=data)
    for name, (data, _) in BAD.items():
        s3_client.put_object(Bucket=bucket, Key=f"uploads/{name}", Body=data)
    driver = SensorDriver(build_definitions(s3_image_store, models), instance)
    [run] = driver.tick_and_run()
    return run


def test_a_batch_with_bad_images_succeeds_and_every_image_is_accounted_for(batch_run, s3_image_store, instance):
    assert batch_run.success, "a bad image must never fail the batch"
    [batch] = instance.get_dynamic_partitions(batches.name)
    assert {e.partition for e in batch_run.get_asset_materialization_events()} == {batch}  # Dagster: one batch
    assert sorted(s3_image_store.results.read_manifest(batch).images) == sorted(
        partition_key_for(n) for n in [*GOOD, *BAD])
    for name in GOOD:
        record = s3_image_store.results.read_source_record(partition_key_for(name))
        assert record.is_valid and record.sha256 and record.facts.phash and record.batch == batch
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


def test_the_batch_materialization_counts_its_images(batch_run):
    [event] = batch_run.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["images"] == len(GOOD) + len(BAD) and metadata["valid"] == len(GOOD)
    assert metadata["rejected"] == len(BAD) and metadata["superseded"] == 0


def test_the_batch_check_fails_and_names_each_rejected_image_with_why(batch_run):
    evaluation = evaluation_of(batch_run)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.description.endswith(f"{len(BAD)} of {len(GOOD) + len(BAD)} images rejected")
    assert evaluation.metadata["failed_count"].value == len(BAD)
    assert evaluation.metadata["passed_count"].value == len(GOOD)
    table = evaluation.metadata["failed"].value
    for name in BAD:
        assert f"`{partition_key_for(name)}`" in table
    assert "| `zero.jpg` | rejected (empty): the object is empty (0 bytes) |" in table
    assert evaluation.metadata["total_rejected_corrupt"].value == 1
    assert evaluation.metadata["run_seconds"].value > 0


def test_the_ui_shows_the_batch_as_failed(batch_run, instance):
    """The Checks -> Partitions view counts the batch's result as current (never "Missing")."""
    [batch] = instance.get_dynamic_partitions(batches.name)
    assert ui_check_statuses(instance, "source_images", CHECK) == {"FAILED": {batch}}


def test_a_rejected_file_shows_what_still_decodes(batch_run):
    pictures = evaluation_of(batch_run).metadata["pictures"].value
    # a broken JPEG shows its top; a small image is still a picture; an empty file, notes and a bomb show nothing
    assert pictures.count("![what still decodes of") == 2 and "data:image/jpeg;base64," in pictures
    assert "what still decodes of truncated.jpg" in pictures and "what still decodes of tiny.png" in pictures
    assert len(pictures) < 300_000


def test_pictures_can_be_turned_off(models, s3_image_store, instance, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="uploads/truncated.jpg", Body=BAD["truncated.jpg"][0])
    defs = build_definitions(s3_image_store, models, review=ReviewSettings(pictures=False))
    [run] = SensorDriver(defs, instance).tick_and_run()
    evaluation = evaluation_of(run)
    assert not evaluation.passed and "pictures" not in evaluation.metadata
    assert s3_image_store.results.read_source_record("truncated.jpg").preview_key is None


def test_a_reupload_goes_in_a_new_batch_and_the_older_entry_is_superseded(models, batch_run, s3_image_store,
                                                                          instance, s3_client, bucket):
    driver = SensorDriver(build_definitions(s3_image_store, models), instance)
    assert driver.tick().run_requests == []  # a restarted sensor: everything so far is processed
    [old_batch] = driver.batches
    s3_client.put_object(Bucket=bucket, Key="uploads/truncated.jpg", Body=GOOD["good.jpg"])  # fixed by the user
    [run] = driver.tick_and_run()
    new_batch = driver.batches[-1]
    assert run.success and new_batch != old_batch
    assert ui_check_statuses(instance, "source_images", CHECK) == {"FAILED": {old_batch}, "SUCCEEDED": {new_batch}}
    record = s3_image_store.results.read_source_record("truncated.jpg")
    assert record.is_valid and record.batch == new_batch
    # The older batch, run again (a backfill), leaves the image to its newer batch and says so.
    again = driver.defs.resolve_job_def("process_images").execute_in_process(
        instance=instance, partition_key=old_batch, asset_selection=[SOURCE_IMAGES])
    evaluation = evaluation_of(again)
    assert evaluation.metadata["skipped"].value == {"superseded": 1}
    assert not evaluation.passed and evaluation.metadata["failed_count"].value == len(BAD) - 1
    assert s3_image_store.results.read_source_record("truncated.jpg").batch == new_batch


def test_reprocessing_one_image_runs_it_alone_and_the_check_still_covers_the_batch(models, batch_run,
                                                                                   s3_image_store, instance):
    """A run of one image (`image_selection`, as `vision-assets reprocess` and the Launchpad set it) ingests that
    image only; its batch's result still judges every image, the others from their stored records."""
    [batch] = instance.get_dynamic_partitions(batches.name)
    before = {name: s3_image_store.results.read_source_record(partition_key_for(name)).processed_at
              for name in ["good.jpg", "notes.jpg"]}
    defs = build_definitions(s3_image_store, models)
    again = defs.resolve_job_def("process_images").execute_in_process(
        instance=instance, partition_key=batch, asset_selection=[SOURCE_IMAGES],
        run_config={"resources": {"image_selection": {"config": {"images": ["good.jpg"]}}}})
    assert again.success
    after = {name: s3_image_store.results.read_source_record(partition_key_for(name)).processed_at
             for name in ["good.jpg", "notes.jpg"]}
    assert after["good.jpg"] > before["good.jpg"] and after["notes.jpg"] == before["notes.jpg"]
    evaluation = evaluation_of(again)
    assert evaluation.metadata["images"].value == len(GOOD) + len(BAD)
    assert evaluation.metadata["failed_count"].value == len(BAD)
    assert ui_check_statuses(instance, "source_images", CHECK) == {"FAILED": {batch}}


def test_a_run_over_several_batches_judges_each_batch(models, s3_image_store, instance, s3_client, bucket):
    """A backfill runs a range of batches in one run: one result per batch, each attributed to its batch."""
    defs = build_definitions(s3_image_store, models, UploadPolicy(batch_size=2))
    driver = SensorDriver(defs, instance)
    for name in ["a.jpg", "b.jpg", "c.jpg"]:
        s3_client.put_object(Bucket=bucket, Key=f"uploads/{name}", Body=GOOD["good.jpg"])
    s3_client.put_object(Bucket=bucket, Key="uploads/d.jpg", Body=b"")
    assert len(driver.tick().run_requests) == 2
    run = defs.resolve_job_def("process_images").execute_in_process(
        instance=instance, asset_selection=[SOURCE_IMAGES],
        tags={"dagster/asset_partition_range_start": driver.batches[0],
              "dagster/asset_partition_range_end": driver.batches[-1]})
    judged = {e.partition: e.passed for e in run.get_asset_check_evaluations() if e.check_name == CHECK}
    assert run.success and set(judged) == set(driver.batches) and sorted(judged.values()) == [False, True]
    assert set().union(*ui_check_statuses(instance, "source_images", CHECK).values()) == set(driver.batches)


def test_object_deleted_after_registration_is_rejected_not_crashed(models, s3_image_store, instance, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="uploads/gone.jpg", Body=GOOD["good.jpg"])
    s3_client.put_object(Bucket=bucket, Key="uploads/kept.jpg", Body=GOOD["good.jpg"])
    driver = SensorDriver(build_definitions(s3_image_store, models), instance)
    [request] = driver.tick().run_requests
    s3_client.delete_object(Bucket=bucket, Key="uploads/gone.jpg")
    assert driver.run(request).success
    assert s3_image_store.results.read_source_record("gone.jpg").rejection.code.value == "missing_object"
    assert s3_image_store.results.read_source_record("kept.jpg").is_valid


def test_an_image_added_to_a_manifest_by_hand_is_rejected_as_unregistered(models, s3_image_store, instance):
    defs = build_definitions(s3_image_store, models)
    s3_image_store.results.write_manifests([BatchManifest(batch="2026-01-01T00:00:00Z-0000",
                                                          created_at="2026-01-01T00:00:00Z", images=["made-up.jpg"])])
    instance.add_dynamic_partitions(batches.name, ["2026-01-01T00:00:00Z-0000"])
    result = defs.resolve_job_def("process_images").execute_in_process(instance=instance,
                                                                       partition_key="2026-01-01T00:00:00Z-0000")
    assert result.success
    assert s3_image_store.results.read_source_record("made-up.jpg").rejection.code.value == "unregistered"
    assert not evaluation_of(result).passed


def test_a_batch_whose_manifest_is_gone_fails_with_what_to_do(models, s3_image_store, instance):
    instance.add_dynamic_partitions(batches.name, ["2026-01-01T00:00:00Z-0000"])
    result = build_definitions(s3_image_store, models).resolve_job_def("process_images").execute_in_process(
        instance=instance, partition_key="2026-01-01T00:00:00Z-0000", raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no manifest for batch(es)" in failure.event_specific_data.error.to_string()
    # not a fault that waiting heals: Dagster's run retries leave it for a person
    assert instance.get_run_by_id(result.run_id).tags["dagster/retry_on_asset_or_op_failure"] == "false"


def test_unreachable_store_is_retried_then_fails_loudly_and_is_left_to_run_retries(models, instance, monkeypatch):
    from vision_assets.vision.storage import object_store

    monkeypatch.setattr(object_store, "OWN_RETRIES", 1)  # each attempt of the step gives up sooner; same outcome
    dead = S3ImageStore(
        s3=S3Connection(endpoint_url="http://127.0.0.1:9", region_name="us-east-1", max_attempts=1),
        bucket="b",
        results_prefix="results/",
    )
    instance.add_dynamic_partitions(batches.name, ["2026-01-01T00:00:00Z-0000"])
    policy = StagePolicy(patience_seconds=0.35, first_retry_seconds=0.1)  # waits of 0.1 and 0.2 s: 2 retries
    result = build_definitions(dead, models, stage_policy=policy).resolve_job_def("process_images").execute_in_process(
        instance=instance, partition_key="2026-01-01T00:00:00Z-0000", raise_on_error=False
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
    assert len(runs) == 1 and runs[0].success and len(driver.batches) == 1
    assert len(driver.partitions) == len(files)
    statuses = {"valid": 0, "rejected": 0}
    for key in driver.partitions:
        record = every_object.results.read_source_record(key)
        assert record is not None, key
        statuses[record.status] += 1
        if record.rejection:
            assert record.rejection.message.strip()
    assert statuses["valid"] > 500 and statuses["rejected"] > 100
