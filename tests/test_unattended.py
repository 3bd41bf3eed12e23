"""Faults a pipeline left alone for weeks meets, injected into real runs: the store out of reach mid-run, embedded
Qdrant held by a search, the index folder deleted or damaged, the CLI with credentials from the environment."""

import json
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest

from tests.conftest import (
    PHOTOS,
    PIPELINE_VALID,
    SensorDriver,
    embedded_client,
    image_bytes,
    run_pipeline,
    ui_check_statuses,
)
from tests.faults import OutageProxy
from vision_assets.cli import main
from vision_assets.resources import QdrantResource, S3Connection, S3ImageStore, StagePolicy
from vision_assets.sensors import index_repair_sensor
from vision_assets.vision.index.connection import IndexUnavailable, IndexUnreadable
from vision_assets.vision.index.vector_index import IndexMismatch, VectorIndex
from vision_assets.vision.models.base import Model
from vision_assets.wiring import build_definitions

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def indexed_images(qdrant_path: str) -> set[str]:
    client = embedded_client(qdrant_path)
    try:
        points, _ = client.scroll("images", limit=1000, with_payload=True)
        return {p.payload["image_id"] for p in points}
    finally:
        client.close()


def wait_for_step(instance: dg.DagsterInstance, step: str, seconds: float = 120) -> str:
    """The run id once some run of the instance has started `step`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for run in instance.get_runs(limit=1):
            if any(e.step_key == step and e.dagster_event and e.dagster_event.event_type_value == "STEP_START"
                   for e in instance.all_logs(run.run_id)):
                return run.run_id
        time.sleep(0.05)
    raise TimeoutError(f"no run reached {step}")


def test_the_store_out_of_reach_mid_run_is_waited_out(models, instance, s3_endpoint, bucket, s3_client):
    """S3 refuses every connection for 6 s while the run is in `detections`: its requests are retried (by botocore,
    then by the store, then by the stage, waiting 1, 2, 4 s ...) and the run goes on; every image ends indexed exactly
    once, and nobody re-ran anything."""
    endpoint = urlparse(s3_endpoint)
    proxy = OutageProxy(endpoint.hostname, endpoint.port)
    store = S3ImageStore(s3=S3Connection(endpoint_url=proxy.url, region_name="us-east-1"), bucket=bucket,
                         prefix="uploads/", results_prefix="results/")
    for name in ("bus.jpg", "zidane.jpg"):
        s3_client.put_object(Bucket=bucket, Key=f"uploads/{name}", Body=(PHOTOS / name).read_bytes())
    for shade in range(3):
        s3_client.put_object(Bucket=bucket, Key=f"uploads/plain-{shade}.png",
                             Body=image_bytes((96, 64), color=(40 * shade, 90, 200)))
    policy = StagePolicy(chunk_size=2, patience_seconds=31, first_retry_seconds=1)  # 1+2+4+8+16 s; chunks of 2
    driver = SensorDriver(build_definitions(store, models, stage_policy=policy), instance, whole_pipeline=True)
    [request] = driver.tick().run_requests
    runs = []
    worker = threading.Thread(target=lambda: runs.append(driver.run(request)))
    worker.start()
    try:
        run_id = wait_for_step(instance, "detections")
        proxy.outage()
        time.sleep(6)
        proxy.restore()
        worker.join(240)
    finally:
        proxy.close()
    [run] = runs
    assert run.success
    retried = [e for e in instance.all_logs(run_id) if e.dagster_event and e.dagster_event.event_type_value ==
               "STEP_UP_FOR_RETRY"]
    # Waited out by the store's own retries of each request, or past them by the stage's: in `detections` only.
    assert {e.step_key for e in retried} <= {"detections"}
    keys = set(driver.partitions)
    assert len(keys) == 5
    assert ui_check_statuses(instance, "qdrant_index", "index_consistent") == {"SUCCEEDED": set(driver.batches)}
    assert indexed_images(models["qdrant"].path) == keys
    client = embedded_client(models["qdrant"].path)
    try:
        assert client.count("images").count == 5
    finally:
        client.close()


def holding_embedded_qdrant(qdrant: QdrantResource, seconds: float) -> threading.Thread:
    """Another vision-assets process's turn on the folder (a search, or a run indexing): held for `seconds`."""
    held = threading.Event()

    def hold():
        with qdrant.open():
            held.set()
            time.sleep(seconds)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(30)
    return holder


def test_a_run_waits_for_a_search_holding_embedded_qdrant(pipeline, models, instance):
    """A search holds embedded Qdrant while a run indexes: the run waits its turn, says so in its log, succeeds."""
    driver, _ = pipeline
    searcher = holding_embedded_qdrant(models["qdrant"], 3)
    started = time.monotonic()
    result = driver.defs.resolve_job_def("reindex").execute_in_process(
        instance=instance, partition_key=driver.batches[0])
    searcher.join()
    assert result.success and time.monotonic() - started >= 2
    messages = [e.message for e in instance.all_logs(result.run_id)]
    assert any("is in use by another process" in m for m in messages)
    assert indexed_images(models["qdrant"].path) == set(PIPELINE_VALID)


def test_cli_search_waits_for_a_run_and_says_so(pipeline, models, capsys):
    indexer = holding_embedded_qdrant(models["qdrant"], 2)
    assert main(["search", "a bus", "--limit", "1"]) == 0
    indexer.join()
    out, err = capsys.readouterr()
    assert "in use by another process" in err and "waiting up to" in err
    assert out.strip()


def test_lock_waits_are_bounded_and_a_foreign_client_is_waited_out(tmp_path, models):
    qdrant = QdrantResource(path=str(tmp_path / "q"), lock_wait_seconds=1.0)
    with qdrant.open():
        with pytest.raises(IndexUnavailable, match="stayed busy for 1s"):
            with qdrant.open():
                pass
    with qdrant.open() as index:
        index.ensure_collections(4, "m")
    import qdrant_edge

    # a user's own Edge shard, opened without our lock: Edge holds its write-ahead log until it is closed
    live = json.loads((tmp_path / "q" / "edge" / "images.json").read_text())["live"]
    foreign = qdrant_edge.EdgeShard.load(str(tmp_path / "q" / "edge" / "images.shards" / live))
    threading.Timer(0.5, foreign.close).start()
    with qdrant.open(wait_seconds=10) as index:
        assert index.client.collection_exists(index.images)


def test_a_lost_index_is_noticed_and_put_back_without_a_model(pipeline, models, instance, s3_client, bucket,
                                                             monkeypatch):
    """The embedded folder deleted: the next batch's run says which images lost their points (index_complete
    fails), the `index_repair` sensor launches `reindex` runs, and they put every point back with no model."""
    driver, _ = pipeline
    shutil.rmtree(models["qdrant"].path)
    s3_client.put_object(Bucket=bucket, Key="uploads/later.png", Body=image_bytes((80, 80), color=(9, 200, 9)))
    [later] = driver.tick_and_run()
    assert later.success
    [completeness] = [e for e in later.get_asset_check_evaluations() if e.check_name == "index_complete"]
    assert not completeness.passed
    assert completeness.description.startswith("3 of 3 images the pipeline indexed have no point")  # the 1st batch
    assert "vision-assets reindex" in completeness.description
    assert set(completeness.metadata["missing_examples"].value) == set(PIPELINE_VALID)

    def no_model(self):
        raise AssertionError(f"reindex loaded {self.identity}")

    monkeypatch.setattr(Model, "load", no_model)
    monkeypatch.setattr(index_repair_sensor, "AUDIT_BATCHES_PER_TICK", 1)  # an audit of one batch per tick
    repair = driver.defs.resolve_sensor_def("index_repair")
    context = {"instance": instance, "definitions": driver.defs, "resources": driver.defs.resources,
               "instance_ref": instance.get_ref()}
    with dg.build_sensor_context(**context) as ctx:
        result = repair.evaluate_tick(ctx)
    # One run over the batch that lost them (later.png's batch indexed after the loss, and still has its point).
    [request] = result.run_requests
    first, last = request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"]
    assert first == last == driver.batches[0]
    repaired = driver.run(request)
    assert repaired.success
    assert indexed_images(models["qdrant"].path) == {*PIPELINE_VALID, "later.png"}
    [complete] = [e for e in repaired.get_asset_check_evaluations() if e.check_name == "index_complete"]
    assert complete.passed
    with dg.build_sensor_context(**context, cursor=result.cursor) as ctx:
        second = repair.evaluate_tick(ctx)  # the audit goes on with the next batch: nothing left to repair
    assert not second.run_requests
    assert "audit 1: 2 of 2 batches" in second.skip_message and "4 images looked up: complete" in second.skip_message
    with dg.build_sensor_context(**context, cursor=second.cursor) as ctx:
        assert "has not failed since the last audit" in repair.evaluate_tick(ctx).skip_message


def cli_environment(monkeypatch, store: S3ImageStore) -> None:
    """The CLI configured the way a user's shell would: the bucket from settings, credentials from AWS_* vars."""
    monkeypatch.setenv("VISION_ASSETS_S3_BUCKET", store.bucket)
    monkeypatch.setenv("VISION_ASSETS_S3_ENDPOINT_URL", store.s3.endpoint_url)
    monkeypatch.setenv("VISION_ASSETS_S3_REGION", "us-east-1")
    monkeypatch.setenv("VISION_ASSETS_PREFIX", store.prefix)
    monkeypatch.setenv("VISION_ASSETS_RESULTS_PREFIX", store.results_prefix)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "cli-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cli-secret")


def test_cli_reindex_after_the_folder_was_damaged(pipeline, models, s3_image_store, s3_client, bucket, monkeypatch,
                                                  capsys):
    """The folder is damaged, then two uploads arrive: their run fails in `qdrant_index` with the folder's path and
    the command. `reindex --rebuild` indexes every batch that reached the embeddings stage, theirs included
    (announced through the pipeline's job, since they never were), and says so."""
    driver, _ = pipeline
    cli_environment(monkeypatch, s3_image_store)
    folder = Path(models["qdrant"].path)
    live = json.loads((folder / "edge" / "images.json").read_text())["live"]
    (folder / "edge" / "images.shards" / live / "edge_config.json").write_text("{not json")  # Edge's own config
    with pytest.raises(IndexUnreadable, match=f"{folder}.*vision-assets reindex --rebuild.*runs that failed"):
        with models["qdrant"].open():
            pass
    for name in ("late-1.png", "late-2.png"):
        s3_client.put_object(Bucket=bucket, Key=f"uploads/{name}", Body=image_bytes((80, 80), color=(9, 9, 200)))
    [failed] = driver.tick_and_run()
    assert not failed.success
    assert main(["reindex", "--rebuild"]) == 0
    out = capsys.readouterr().out
    assert "moved the old index folder to" in out
    first, late = driver.batches
    assert (f"re-indexing 2 batch(es) that reached the embeddings stage: 1 indexed before, 1 not (their indexing "
            f"failed or never ran: {late})") in out
    assert "all 5 indexed images of those batches have their point" in out
    assert indexed_images(str(folder)) == {*PIPELINE_VALID, "late-1.png", "late-2.png"}
    assert list(folder.parent.glob("qdrant.unreadable-*"))  # kept for a person to look at
    shutil.rmtree(folder)
    assert main(["reindex"]) == 0  # the default: only what is missing
    assert "re-indexing 2 batch(es) with images missing from the index or whose indexing failed: 2 indexed before" \
        in capsys.readouterr().out
    assert indexed_images(str(folder)) == {*PIPELINE_VALID, "late-1.png", "late-2.png"}


def test_cli_with_credentials_from_the_environment(pipeline, s3_image_store, s3_client, monkeypatch, tmp_path, capsys):
    """`upload`, `search` and `delete` against S3 (moto's server) with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    set: resources built outside a run resolve their EnvVar settings."""
    cli_environment(monkeypatch, s3_image_store)
    photo = tmp_path / "from-cli.png"
    photo.write_bytes(image_bytes((64, 64)))
    assert main(["upload", str(photo), "--to", "cli/"]) == 0
    assert s3_client.head_object(Bucket=s3_image_store.bucket, Key="uploads/cli/from-cli.png")["ContentLength"] > 0
    assert main(["search", "a bus", "--limit", "1"]) == 0
    assert main(["delete", "plain.png"]) == 0
    assert "deleted 1 image(s)" in capsys.readouterr().out


def test_cli_reprocess_runs_exactly_the_images_named(pipeline, s3_image_store, s3_client, monkeypatch, capsys):
    """`vision-assets reprocess ID --from STAGE`: those images' results written again, in their batch, the other
    images' left as they were; an id that is not in the catalogue is refused with what to do."""
    driver, _ = pipeline
    cli_environment(monkeypatch, s3_image_store)
    written = lambda image: s3_client.head_object(
        Bucket=s3_image_store.bucket, Key=f"results/{image}/~embeddings.json")["LastModified"]
    before = {image: written(image) for image in ("bus.jpg", "zidane.jpg")}
    time.sleep(1.1)  # S3 times have one-second steps
    assert main(["reprocess", "zidane.jpg", "--from", "embeddings"]) == 0
    out = capsys.readouterr().out
    assert "re-running 1 image(s) from embeddings in 1 batch(es)" in out and "done" in out
    assert written("zidane.jpg") > before["zidane.jpg"] and written("bus.jpg") == before["bus.jpg"]
    assert main(["reprocess", "nobody.jpg"]) == 2
    assert "not processed yet, or no such image: nobody.jpg" in capsys.readouterr().err


def test_a_fault_that_waiting_cannot_heal_is_left_failed_for_a_person(pipeline, instance, monkeypatch):
    """A mismatched collection (or a bug) fails the run at once, no stage retries, and tags it so that Dagster's run
    retries leave it alone: the run page shows the error to the person who must act."""
    driver, _ = pipeline

    def mismatch(self, dimension, embedding_model):
        raise IndexMismatch("collection 'images' holds 768-d vectors from another model")

    monkeypatch.setattr(VectorIndex, "ensure_collections", mismatch)
    result = driver.defs.resolve_job_def("reindex").execute_in_process(
        instance=instance, raise_on_error=False, partition_key=driver.batches[0])
    assert not result.success
    kinds = [e.event_type_value for e in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in kinds
    assert instance.get_run_by_id(result.run_id).tags["dagster/retry_on_asset_or_op_failure"] == "false"


def test_the_index_graph_is_built_outside_runs(models, s3_image_store, instance, s3_client, bucket, monkeypatch):
    """A pipeline run only writes its points; it reports how many are outside the HNSW graph, and once that reaches
    the threshold the `index_graph` sensor launches `build_index_graph`, which puts them in the graph."""
    from vision_assets.resources import QdrantResource
    from vision_assets.vision.index import edge_shards

    qdrant = QdrantResource(path=models["qdrant"].path, hnsw_threshold=5)
    driver, run = run_pipeline({**models, "qdrant": qdrant}, s3_image_store, instance, s3_client, bucket)
    assert run.success
    client = embedded_client(qdrant.path)
    points = {name: client.get_collection(name).points_count for name in ("images", "crops")}
    assert [client.get_collection(name).indexed_vectors_count for name in points] == [0, 0]  # the run built nothing
    client.close()
    [indexed] = [e for e in run.get_asset_materialization_events() if e.asset_key.path == ["qdrant_index"]]
    assert indexed.materialization.metadata["unindexed_points"].value == sum(points.values())

    sensor = driver.defs.resolve_sensor_def("index_graph")
    context = {"instance": instance, "definitions": driver.defs, "resources": driver.defs.resources}
    with dg.build_sensor_context(**context) as ctx:
        result = sensor.evaluate_tick(ctx)
    [request] = result.run_requests
    assert request.job_name in (None, "build_index_graph")
    monkeypatch.setattr(edge_shards, "SEAL_POINTS", 1)  # the build seals the live shards it built
    built = driver.defs.resolve_job_def("build_index_graph").execute_in_process(instance=instance)
    assert built.success
    outputs = {e.step_key: {k: v.value for k, v in e.event_specific_data.metadata.items()}
               for e in built.all_events if e.event_type_value == "STEP_OUTPUT"}
    figures = outputs["build_index_graph_op"]
    assert figures["built_points"] == sum(points.values()) and figures["held_seconds"] >= figures["build_seconds"]
    assert outputs["compact_index_op"]["merged_shards"] == 2  # the sealed images and crops shards, on copies
    client = embedded_client(qdrant.path)
    # (Edge leaves a segment under 1 KB of vectors unindexed: the three tiny image vectors here.)
    assert client.get_collection("crops").indexed_vectors_count == points["crops"]
    assert client.get_collection("crops").shards_count == 2  # sealed, and a new live shard
    client.close()
    with dg.build_sensor_context(**context, cursor=result.cursor) as ctx:
        assert "no index writes since the last look" in sensor.evaluate_tick(ctx).skip_message
    # A reindex builds as it goes, but leaves sealed shards to merge: that launches the job too.
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "qdrant_index", partition=indexed.partition, metadata={"unindexed_points": 0, "unmerged_shards": 2}))
    with dg.build_sensor_context(**context, cursor=result.cursor) as ctx:
        assert len(sensor.evaluate_tick(ctx).run_requests) == 1


def test_a_step_retry_resumes_after_the_chunks_it_finished(models, s3_image_store, instance, s3_client, bucket,
                                                            monkeypatch):
    """The store fails once mid-step, in `source_images` and again in `detections` (on the third of six images,
    chunks of two): each step is retried and resumes, so the images of its first chunk are fetched and detected
    once, not again with the rest; the run succeeds and every image is indexed."""
    from collections import Counter

    from vision_assets.assets import source_images as ingest_module
    from vision_assets.vision.models.detector import YoloDetector
    from vision_assets.vision.storage.object_store import StoreUnavailable
    from vision_assets.vision.storage.results_store import DETECTIONS, SOURCE_RECORD, ResultsStore

    names = [f"photo-{n}.png" for n in range(6)]
    for n, name in enumerate(names):
        s3_client.put_object(Bucket=bucket, Key=f"uploads/{name}", Body=image_bytes((96, 64), color=(40 * n, 90, 200)))
    ingested, detected, faults = Counter(), Counter(), {SOURCE_RECORD: names[2], DETECTIONS: names[2]}
    real_ingest, real_detect, real_write = ingest_module.ingest_image, YoloDetector.detect, ResultsStore.write

    def counting_ingest(image, *args, **kwargs):
        ingested[image] += 1
        return real_ingest(image, *args, **kwargs)

    def counting_detect(self, images):
        detected[len(images)] += 1
        return real_detect(self, images)

    def failing_once(self, key, name, record):
        if faults.get(name) == key:
            del faults[name]
            raise StoreUnavailable(f"S3 store unreachable (writing {name} of {key}): injected")
        return real_write(self, key, name, record)

    monkeypatch.setattr(ingest_module, "ingest_image", counting_ingest)
    monkeypatch.setattr(YoloDetector, "detect", counting_detect)
    monkeypatch.setattr(ResultsStore, "write", failing_once)
    policy = StagePolicy(chunk_size=2, patience_seconds=1, first_retry_seconds=0.1)
    driver = SensorDriver(build_definitions(s3_image_store, models, stage_policy=policy), instance,
                          whole_pipeline=True)
    [run] = driver.tick_and_run()
    assert run.success and not faults  # both faults happened
    retried = [e.step_key for e in run.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert sorted(retried) == ["detections", "source_images"]
    first_chunk = names[:2]
    assert all(ingested[name] == 1 for name in first_chunk), ingested  # not fetched again by the retry
    assert sum(ingested.values()) <= len(names) + 2  # at most the failed chunk again
    assert sum(size * calls for size, calls in detected.items()) <= len(names) + 2, detected
    assert ui_check_statuses(instance, "qdrant_index", "index_consistent") == {"SUCCEEDED": set(driver.batches)}
    assert indexed_images(models["qdrant"].path) == set(driver.partitions)
    assert len(driver.partitions) == len(names)
    leftover = list(s3_image_store.objects.list(f"{s3_image_store.results_prefix}~runs/"))
    assert leftover == []  # each step's progress removed once it finished


def test_a_flaky_store_slows_a_batch_down_but_loses_and_repeats_nothing(models, s3_endpoint, bucket, s3_client,
                                                                         instance):
    """S3 answering 20% of requests with a 503, resetting 5% of connections and holding 10% back for 2 s (the
    client gives up on a request after 0.5 s here, 2 s by default, and asks again): the batch is processed, every
    image indexed once, with no run failure. bench/flaky_store_bench.py measures it on 60 photos."""
    from tests.faults import FlakyStoreProxy

    proxy = FlakyStoreProxy(s3_endpoint, errors=0.2, resets=0.05, delays=0.1, delay_seconds=2, seed=7)
    store = S3ImageStore(s3=S3Connection(endpoint_url=proxy.url, region_name="us-east-1"), bucket=bucket,
                         prefix="uploads/", results_prefix="results/", timeout_seconds=0.5)
    for n in range(3):
        s3_client.put_object(Bucket=bucket, Key=f"uploads/photo-{n}.png",
                             Body=image_bytes((96, 64), color=(50 * n, 90, 200)))
    policy = StagePolicy(chunk_size=2, patience_seconds=60, first_retry_seconds=1)
    try:
        driver = SensorDriver(build_definitions(store, models, stage_policy=policy), instance, whole_pipeline=True)
        [run] = driver.tick_and_run()
    finally:
        proxy.close()
    assert run.success
    assert proxy.faults["error"] and proxy.faults["reset"] and proxy.faults["delay"], proxy.faults
    assert indexed_images(models["qdrant"].path) == set(driver.partitions) and len(driver.partitions) == 3
    client = embedded_client(models["qdrant"].path)
    try:
        assert client.count("images").count == 3  # once each
    finally:
        client.close()
