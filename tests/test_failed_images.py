"""Batches a run left Failed are re-run by the pipeline itself: from the stage that failed, after waits that double,
a bounded number of times, then named for a person. Faults injected into real in-process runs (a worker dying
mid-stage is shown for real in test_dagster_dev.py; here the stage raises at the same point)."""

import dataclasses
import json
import time
from datetime import datetime

import dagster as dg
import pytest

from tests.conftest import SensorDriver, embedded_client, image_bytes, ui_check_statuses
from vision_assets.resources import CallbackSettings, FailedImageRetries, StagePolicy
from vision_assets.sensors.dead_worker_sensor import dead_worker_explanation
from vision_assets.sensors.failures import ATTEMPT_TAG, failed_batches
from vision_assets.vision.callback import Outbox
from vision_assets.vision.index.vector_index import VectorIndex, crop_point_id
from vision_assets.vision.models.detector import YoloDetector
from vision_assets.vision.records import EmbeddingsRecord
from vision_assets.vision.retry_budget import FailedBatch, RetryBudget
from vision_assets.vision.storage.results_store import EMBEDDINGS
from vision_assets.wiring import build_definitions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
NEW = ["n0.png", "n1.png", "n2.png", "n3.png"]


def test_the_budget_waits_longer_each_time_and_stops_at_its_cap():
    budget = RetryBudget(attempts=3, first_wait_seconds=60)
    failed = [FailedBatch(f"k{attempt}", "detections", "r", attempt, failed_at=1000) for attempt in range(4)]
    plan = budget.plan(failed, now=1000 + 119)
    assert [f.batch for f in plan.due] == ["k0"]  # 60 s after the first failure
    assert [(f.batch, when) for f, when in plan.waiting] == [("k1", 1120), ("k2", 1240)]
    assert [f.batch for f in plan.exhausted] == ["k3"]
    assert "1 batch(es) still failed after 3 automatic re-run(s)" in plan.describe_exhausted(3, "fix it")


def point_ids(qdrant_path: str, collection: str) -> set[str]:
    client = embedded_client(qdrant_path)
    try:
        points, _ = client.scroll(collection, limit=10_000, with_payload=False)
        return {str(p.id) for p in points}
    finally:
        client.close()


def evaluate(driver: SensorDriver, name: str, cursor: str | None = None):
    sensor = driver.defs.resolve_sensor_def(name)
    with dg.build_sensor_context(instance=driver.instance, definitions=driver.defs, resources=driver.defs.resources,
                                 instance_ref=driver.instance.get_ref(), cursor=cursor) as context:
        return sensor.evaluate_tick(context)


@pytest.fixture
def failing_driver(pipeline, models, s3_image_store, s3_client, bucket, instance):
    """The pipeline's first batch done; four more images uploaded (the next batch); the driver's definitions re-run
    failed batches at once (no wait), at most twice, index one image per chunk, and write callbacks to the outbox (none is sent:
    the callback sensor is not evaluated here)."""
    defs = build_definitions(s3_image_store, models, stage_policy=StagePolicy(chunk_size=1),
                             callback=CallbackSettings(url="http://127.0.0.1:9/hook", allow_private=True),
                             failed_image_retries=FailedImageRetries(attempts=2, first_wait_seconds=0))
    driver = SensorDriver(defs, instance, whole_pipeline=True)
    driver.cursor = pipeline[0].cursor
    for shade, name in enumerate(NEW):
        s3_client.put_object(Bucket=bucket, Key=f"uploads/{name}", Body=image_bytes((96, 80), color=(60 * shade, 9, 9)))
    return driver


def test_images_whose_indexing_died_half_way_are_reindexed_and_announced(failing_driver, models, monkeypatch):
    """The run dies in `qdrant_index` after writing the first image's points and the second image's image point
    but not its crops (Dagster's retries used up): a Failed batch, one image with only part of its points. The
    `index_repair` sensor re-indexes them (with their callbacks, through process_images) without waiting for
    `index_complete`, and every point is there afterwards."""
    driver = failing_driver
    real_upsert = VectorIndex.upsert
    calls = []

    def dies_on_the_second_chunk(self, images, batch_size=256):
        calls.append(images)
        if len(calls) == 2:  # its image point is written, then the worker dies before the crop points
            real_upsert(self, [dataclasses.replace(i, crop_vectors=i.crop_vectors[:0], crop_payloads=[],
                                                   crop_indexes=[]) for i in images])
            raise RuntimeError("run worker killed")
        real_upsert(self, images, batch_size)

    monkeypatch.setattr(VectorIndex, "upsert", dies_on_the_second_chunk)
    [run] = driver.tick_and_run()
    assert not run.success
    monkeypatch.setattr(VectorIndex, "upsert", real_upsert)
    results = driver.defs.resources["image_store"].results
    crops = {crop_point_id(k, i) for k in NEW for i in results.read(k, EMBEDDINGS, EmbeddingsRecord).crop_indexes}
    assert crops and not crops <= point_ids(models["qdrant"].path, "crops")  # what crop search would miss
    new_batch = driver.batches[-1]
    failed = failed_batches(driver.instance, set(driver.batches))
    assert {(f.batch, f.stage) for f in failed} == {(new_batch, "qdrant_index")}
    assert not evaluate(driver, "failed_image_retry").run_requests  # the index stage is index_repair's

    result = evaluate(driver, "index_repair")
    [request] = result.run_requests
    assert request.job_name == "process_images" and request.asset_selection == [dg.AssetKey("qdrant_index")]
    assert request.tags[ATTEMPT_TAG] == "1"
    assert (request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]) \
        == (new_batch, new_batch)
    repaired = driver.run(request)
    assert repaired.success
    assert failed_batches(driver.instance, set(driver.batches)) == []
    assert ui_check_statuses(driver.instance, "qdrant_index", "index_consistent")["SUCCEEDED"] == set(driver.batches)
    assert crops <= point_ids(models["qdrant"].path, "crops")  # the half-written image's too
    announced = {e.message.image_id: e.message.status for e in Outbox(results).pending()}
    assert {key: announced.get(key) for key in NEW} == {key: "indexed" for key in NEW}


def test_images_failed_in_a_model_stage_are_rerun_from_it_then_left_for_a_person(failing_driver, monkeypatch):
    """The detector fails for the batch (Dagster's retries used up). `failed_image_retry` re-runs the batch
    from `detections` on (attempt 1), again after that fails (attempt 2), then stops and names them; once the
    cause is gone a person's re-run (or the next attempt) indexes them."""
    driver = failing_driver

    def broken(self, images):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(YoloDetector, "detect", broken)
    [run] = driver.tick_and_run()
    assert not run.success
    cursor = None  # the sensor's: the failed runs that still leave images Failed, and where it read up to
    for attempt in (1, 2):
        tick = evaluate(driver, "failed_image_retry", cursor)
        cursor = tick.cursor
        [request] = tick.run_requests
        assert request.tags[ATTEMPT_TAG] == str(attempt)
        assert request.asset_selection == [dg.AssetKey(k) for k in
                                           ("detections", "embeddings", "specialist_labels", "referee_opinions",
                                                        "qdrant_index")]
        assert not driver.run(request).success
    gave_up = evaluate(driver, "failed_image_retry", cursor)
    assert not gave_up.run_requests
    assert "1 batch(es) still failed after 2 automatic re-run(s)" in gave_up.skip_message
    assert "stage detections" in gave_up.skip_message and driver.batches[-1] in gave_up.skip_message
    assert len(json.loads(gave_up.cursor)["runs"]) == 1  # the earlier failed runs' images were planned again since

    monkeypatch.undo()  # the cause is fixed; no more automatic attempts: the person re-runs them
    assert not evaluate(driver, "failed_image_retry", gave_up.cursor).run_requests
    rerun = driver.defs.resolve_job_def("process_images").execute_in_process(
        instance=driver.instance, raise_on_error=False,
        partition_key=driver.batches[-1])
    assert rerun.success
    assert failed_batches(driver.instance, set(driver.batches)) == []
    settled = evaluate(driver, "failed_image_retry", gave_up.cursor)
    assert not settled.run_requests and json.loads(settled.cursor)["runs"] == []  # nothing left to look at
    assert ui_check_statuses(driver.instance, "qdrant_index", "index_consistent")["SUCCEEDED"] == set(driver.batches)


def test_a_failed_batch_waits_for_its_back_off(failing_driver, monkeypatch):
    driver = failing_driver
    monkeypatch.setattr(YoloDetector, "detect", lambda self, images: (_ for _ in ()).throw(RuntimeError("boom")))
    [run] = driver.tick_and_run()
    assert not run.success
    slow = build_definitions(driver.defs.resources["image_store"], {k: driver.defs.resources[k] for k in
                             ("detector", "embedder", "specialists", "referee", "labeling", "qdrant")},
                             failed_image_retries=FailedImageRetries(attempts=2, first_wait_seconds=3600))
    waiting = evaluate(SensorDriver(slow, driver.instance), "failed_image_retry")
    assert not waiting.run_requests and "1 failed batch(es) waiting for their next attempt" in waiting.skip_message
    due = datetime.fromisoformat(waiting.skip_message.rsplit("due at ", 1)[1].rstrip(")")).timestamp()
    assert time.time() + 3500 < due <= time.time() + 3601


def test_a_dead_worker_is_explained_with_what_happens_next():
    crash = ("Run execution process for 1234 was terminated by signal 9 (SIGKILL). This usually indicates that the "
             "process was killed by the operating system due to running out of memory.")
    retried = dead_worker_explanation(crash, will_retry=True, retry_number=0, max_retries=2)
    assert retried.startswith("The run's worker process died (terminated by signal 9 (SIGKILL): the operating")
    assert "retry 1 of 2" in retried
    final = dead_worker_explanation("Run execution process for 1234 unexpectedly exited with code 1.", False, 2, 2)
    assert "(exited with code 1:" in final and "failed_image_retry" in final
