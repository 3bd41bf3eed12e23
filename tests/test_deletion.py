"""Deleting an image: its object removed from the bucket, or the delete_images job; points and results go too."""

import pytest
from qdrant_client import models

from tests.conftest import PIPELINE_VALID, embedded_client
from vision_assets.assets.deletion import delete_run_config
from vision_assets.vision.deletion import result_keys, safe_to_delete
from vision_assets.vision.storage.object_store import FolderObjectStore
from vision_assets.vision.storage.results_store import ResultsStore

pytestmark = pytest.mark.slow  # see docs/testing.md: `uv run pytest -m "not slow"` leaves it out


def points_of(models_resources, image_id: str) -> tuple[int, int]:
    client = embedded_client(models_resources["qdrant"].path)
    try:
        only = models.Filter(must=[models.FieldCondition(key="image_id", match=models.MatchValue(value=image_id))])
        return client.count("images", count_filter=only).count, client.count("crops", count_filter=only).count
    finally:
        client.close()


def test_removing_the_object_deletes_points_results_and_partition(pipeline, models, s3_image_store, s3_client, bucket):
    driver, _ = pipeline
    assert points_of(models, "bus.jpg")[0] == 1 and points_of(models, "bus.jpg")[1] > 0
    s3_client.delete_object(Bucket=bucket, Key="uploads/bus.jpg")
    result = driver.tick()
    [request] = result.run_requests
    assert request.job_name == "delete_images"
    assert "bus.jpg" not in driver.partitions
    assert driver.run(request).success
    assert points_of(models, "bus.jpg") == (0, 0)
    assert result_keys(s3_image_store.results, "bus.jpg") == []
    for other in set(PIPELINE_VALID) - {"bus.jpg"}:  # the rest of the catalogue is untouched
        assert points_of(models, other)[0] == 1 and result_keys(s3_image_store.results, other)
    assert driver.tick().run_requests == []


def test_the_delete_job_removes_the_object_too_so_it_does_not_come_back(pipeline, models, s3_image_store, s3_client,
                                                                         bucket):
    driver, _ = pipeline
    run = driver.defs.resolve_job_def("delete_images").execute_in_process(
        instance=driver.instance, run_config=delete_run_config(["zidane.jpg"], delete_objects=True)
    )
    assert run.success
    assert points_of(models, "zidane.jpg") == (0, 0)
    assert "zidane.jpg" not in driver.partitions
    listed = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="uploads/")["Contents"]]
    assert "uploads/zidane.jpg" not in listed
    assert driver.tick().run_requests == []  # nothing re-registered, nothing else deleted


def test_results_of_one_partition_only(tmp_path):
    results = ResultsStore(FolderObjectStore(tmp_path), "results/")
    for key in ["results/a/~source.json", "results/a/~labels.json", "results/a/b/~source.json", "results/ab/~x.json"]:
        results.store.put(key, b"{}")
    assert sorted(result_keys(results, "a")) == ["results/a/~labels.json", "results/a/~source.json"]


def test_mass_disappearance_is_not_taken_as_deletion():
    assert safe_to_delete(5, 10)
    assert safe_to_delete(100, 100)
    assert not safe_to_delete(150, 1000)  # most likely a wrong prefix or a partial listing
    assert safe_to_delete(1000, 20000)


def test_cli_delete(pipeline, models, s3_image_store, monkeypatch, tmp_path):
    """`vision-assets delete` runs the same job against the instance under DAGSTER_HOME."""
    from vision_assets.cli import main

    driver, _ = pipeline
    monkeypatch.setenv("VISION_ASSETS_S3_BUCKET", s3_image_store.bucket)
    monkeypatch.setenv("VISION_ASSETS_S3_ENDPOINT_URL", s3_image_store.s3.endpoint_url)
    monkeypatch.setenv("VISION_ASSETS_PREFIX", s3_image_store.prefix)
    monkeypatch.setenv("VISION_ASSETS_RESULTS_PREFIX", s3_image_store.results_prefix)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    assert main(["delete", "plain.png"]) == 0
    assert points_of(models, "plain.png") == (0, 0)
    assert result_keys(s3_image_store.results, "plain.png") == []
