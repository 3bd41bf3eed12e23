"""An instance from before upload batches (one partition per image, per-image check results) moved to batches by
the upload sensor's first ticks: grouped in registration order, materialized where every image had been, checks
judged from the per-image results, nothing re-processed, nothing lost, new uploads registered once it is done.

The old instance is written here the way the old code left it (the registry of image partitions, runless per-image
materializations and check results under the old check names, each image's registration and source record): the old
code itself is not importable any more."""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from tests.conftest import SensorDriver, image_bytes, ui_check_statuses
from vision_assets.keys import PIPELINE_STAGES, SOURCE_IMAGES
from vision_assets.partitions import batches, images
from vision_assets.resources import LocalImageStore, UploadPolicy
from vision_assets.sensors import batch_migration
from vision_assets.vision.records import SourceImageRecord
from vision_assets.vision.storage.batch_lookup import BatchLookup
from vision_assets.wiring import build_definitions

pytestmark = pytest.mark.slow  # see docs/testing.md: `uv run pytest -m "not slow"` leaves it out

OLD = ["a.jpg", "b.jpg", "bad.jpg", "c.jpg", "stuck.jpg"]  # registration order


def old_instance(instance: dg.DagsterInstance, store) -> None:
    """What the per-image code left: every image registered as a partition and ingested; `bad.jpg` rejected;
    `stuck.jpg` whose run died after ingest; `c.jpg` indexed but its `indexed` result failed."""
    instance.add_dynamic_partitions(images.name, OLD)
    results = store.results
    for key in OLD:
        obj = next(o for o in store.objects.list(store.prefix) if o.key.endswith(key))
        results.write_registration(store.registration(key, obj))
        results.write_source_record(SourceImageRecord(
            partition_key=key, object_key=obj.key, source_uri=store.objects.uri(obj.key), etag=obj.etag,
            size_bytes=obj.size, status="rejected" if key == "bad.jpg" else "valid",
            processed_at=datetime.now(UTC), seconds=0.1))
        for stage in PIPELINE_STAGES if key != "stuck.jpg" else [SOURCE_IMAGES]:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=stage, partition=key))
        old_checks = [("source_images", "image_valid", key != "bad.jpg")]
        if key not in ("bad.jpg", "stuck.jpg"):
            old_checks += [("qdrant_index", "indexed", key != "c.jpg"), ("specialist_labels", "labels_confident", True)]
        for asset, check, passed in old_checks:
            instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey(asset), check_name=check, passed=passed, partition=key))


@pytest.fixture
def store(tmp_path) -> LocalImageStore:
    uploads = tmp_path / "bucket" / "uploads"
    uploads.mkdir(parents=True)
    for key in OLD:
        (uploads / key).write_bytes(image_bytes(fmt="JPEG"))
    return LocalImageStore(root=str(tmp_path / "bucket"), prefix="uploads/", results_prefix="results/",
                           settle_seconds=0)


def test_an_instance_with_one_partition_per_image_moves_to_batches_without_reprocessing(
        models, store, instance, monkeypatch):
    old_instance(instance, store)
    monkeypatch.setattr(batch_migration, "BATCHES_PER_TICK", 2)
    driver = SensorDriver(build_definitions(store, models, UploadPolicy(batch_size=2)), instance)

    first = driver.tick()
    assert not first.run_requests and "moved 4 of 5 images" in first.skip_message
    assert "new uploads wait until it is done" in first.skip_message
    second = driver.tick()
    assert not second.run_requests and "moved 5 of 5 images" in second.skip_message and "done" in second.skip_message
    first_batch, second_batch, third_batch = driver.batches
    results = store.results
    manifests = results.read_manifests(driver.batches)
    assert [manifests[b].images for b in driver.batches] == [["a.jpg", "b.jpg"], ["bad.jpg", "c.jpg"], ["stuck.jpg"]]
    assert all(m.migrated and not m.registrations for m in manifests.values())
    assert driver.partitions == OLD  # the registry is kept: nothing registered twice, nothing lost

    # Materialized where every image had been: the batch whose run died is missing its later stages.
    for stage in PIPELINE_STAGES:
        expected = set(driver.batches) if stage == SOURCE_IMAGES else {first_batch, second_batch}
        assert instance.get_materialized_partitions(stage) >= expected, stage
        if stage != SOURCE_IMAGES:
            assert third_batch not in instance.get_materialized_partitions(stage), stage
    # Each batch's checks judged from its images' last results, and current in the UI.
    assert ui_check_statuses(instance, "source_images", "images_valid") == {
        "SUCCEEDED": {first_batch, third_batch}, "FAILED": {second_batch}}
    assert ui_check_statuses(instance, "qdrant_index", "index_consistent") == {
        "SUCCEEDED": {first_batch}, "FAILED": {second_batch}}
    assert ui_check_statuses(instance, "specialist_labels", "labels_confident") == {
        "SUCCEEDED": {first_batch, second_batch}}
    # The index ledger and each image's batch, for the audit, reviews and deletion.
    assert results.read_batch_indexed(first_batch).indexed == ["a.jpg", "b.jpg"]
    assert results.read_batch_indexed(second_batch).indexed == []
    lookup = BatchLookup(results)
    assert [lookup.batch_of(key, results.read_source_record(key)) for key in OLD] == [
        first_batch, first_batch, second_batch, second_batch, third_batch]

    # Done: the next tick lists the bucket and finds nothing new (all were processed), then new uploads flow.
    assert not driver.tick().run_requests
    (Path(store.root) / "uploads" / "new.jpg").write_bytes(image_bytes(fmt="JPEG", color=(1, 2, 3)))
    [request] = driver.tick().run_requests
    assert results.read_manifest(request.partition_key).images == ["new.jpg"]
    assert driver.run(request).success


def test_a_new_instance_has_nothing_to_move(models, store, instance):
    driver = SensorDriver(build_definitions(store, models), instance)
    [request] = driver.tick().run_requests  # the first tick registers the uploads at once
    assert sorted(store.results.read_manifest(request.partition_key).images) == sorted(OLD)
    assert not instance.get_dynamic_partitions(batches.name)[1:]
    cursor = driver.cursor
    assert '"legacy_images":0' in cursor.replace(" ", "")


def test_moving_never_lists_the_bucket(models, store, instance):
    """A migration tick reads the instance and the images' own records, not the bucket: listing a million objects
    is no part of it."""
    old_instance(instance, store)
    listed = []
    original = type(store.objects).list

    def counting(self, prefix=""):
        listed.append(prefix)
        return original(self, prefix)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(store.objects), "list", counting)
        result = SensorDriver(build_definitions(store, models), instance).tick()
    assert "moved 5 of 5" in result.skip_message and listed == []
