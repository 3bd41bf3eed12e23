"""A day's work on a catalogue of a million images, on this machine: the catalogue seeded as the pipeline leaves it,
then each of the day's operations through the project's own code and Dagster, timed where users meet them (sensor
ticks, runs, the search service over HTTP), and the instance's size.

The catalogue (seeded, not processed: processing a million images here would take days): N objects in a local
folder bucket (hard links to one photo, 1,000 per folder), each registered in the `images` registry and in an
upload batch of 256 (a partition of `batches`, its manifest and its index ledger in the results store), each batch
materialized for every stage; the embedded index holds N image points and N crop points with the pipeline's
payload fields (random unit vectors of the tiny CLIP's dimension), its graph built 10,000 points at a time as
`build_index_graph` builds it; the upload sensor's cursor as a complete listing pass leaves it.

The day, compressed: `--uploads` new photos (registered by the upload sensor's listing pass, every batch timed on
its own would be the whole day, so `--process-batches` of them are processed by real `process_images` runs with the
tiny offline models and the rest extrapolated), `--verdicts` verdicts in one corrections file (one review_sensor
tick and one apply_reviews run), `--searches` text searches through the search service, `--delete` objects removed
from the bucket (found by the next listing pass, removed by a delete_images run), and a model change's backfill of
`--backfill` of the batches (`--backfill-batches` of them run, the rest extrapolated). The periodic sensors'
ticks (index audit, index graph) are timed at this size too. Not part of the test suite.

    uv run python bench/soak_bench.py [--catalog 1000000] [--uploads 10000] [--process-batches 4] [--verdicts 1000]
        [--searches 100] [--delete 1000] [--backfill 0.01] [--backfill-batches 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

import dagster as dg
import httpx
import numpy as np
import ultralytics
import yaml
from qdrant_client import models as qm

from tests.conftest import SensorDriver, search_service, serving
from vision_assets.bootstrap import bootstrap
from vision_assets.event_storage import sqlite_storage
from vision_assets.keys import PIPELINE_STAGES
from vision_assets.partitions import batches, images
from vision_assets.resources import LocalImageStore
from vision_assets.service.app import create_app
from vision_assets.settings import Settings
from vision_assets.tools.offline_models import build_offline_models
from vision_assets.vision.batches import BatchIndexed, BatchManifest, batch_key
from vision_assets.vision.chunking import chunked
from vision_assets.vision.index.connection import compact_embedded
from vision_assets.vision.index.vector_index import crop_point_id, image_point_id
from vision_assets.vision.records import RegisteredImage
from vision_assets.vision.upload_tracking import UploadCursor
from vision_assets.wiring import build_definitions, model_resources_from

bootstrap()

PHOTOS = Path(ultralytics.__file__).parent / "assets"
BATCH = 256
LINKS_PER_FILE = 50_000
ENTITIES = ["dog", "cat", "person", "bird", "car", "boat"]
TEXTS = ["dogs running on a beach", "a cat on a sofa", "a red car", "birds over the sea", "people at a market"]
SEEDED_AT = datetime(2026, 11, 1, 0, 0, 0, tzinfo=UTC)


def catalog_key(n: int) -> str:
    return f"catalog/{n // 1000:04d}/{n:07d}.jpg"


class Day:
    """The bench's instance, definitions and sensor cursors, and what each step took."""

    def __init__(self, home: Path, instance: dg.DagsterInstance, defs: dg.Definitions, store: LocalImageStore):
        self.home, self.instance, self.defs, self.store = home, instance, defs, store
        self.sensors: dict[str, SensorDriver] = {}
        self.report: list[tuple[str, str]] = []

    def sensor(self, name: str) -> SensorDriver:
        """The sensor evaluated as the daemon does (its partition requests applied, its cursor kept)."""
        if name not in self.sensors:
            self.sensors[name] = SensorDriver(self.defs, self.instance, whole_pipeline=True, sensor=name)
        return self.sensors[name]

    def tick(self, sensor: str) -> tuple[float, dg.SensorResult]:
        started = time.perf_counter()
        result = self.sensor(sensor).tick()
        return time.perf_counter() - started, result

    def run(self, request: dg.RunRequest, job: str | None = None) -> float:
        started = time.perf_counter()
        result = self.defs.resolve_job_def(job or request.job_name or "process_images").execute_in_process(
            instance=self.instance, run_config=request.run_config, tags=request.tags,
            partition_key=request.partition_key, raise_on_error=False)
        took = time.perf_counter() - started
        if not result.success:
            raise RuntimeError(f"{request.job_name} failed: {[e.message for e in result.all_events if e.is_failure]}")
        return took

    def say(self, what: str, figure: str) -> None:
        self.report.append((what, figure))
        print(f"  {what}: {figure}", flush=True)


def seed(day: Day, count: int, dimension: int, model: str) -> None:
    started = time.perf_counter()
    bucket, etags = Path(day.store.root), {}
    for n in range(count):
        path = bucket / catalog_key(n)
        if n % 1000 == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        source = day.home / f"seed-{n // LINKS_PER_FILE}.jpg"  # ext4 allows 65,000 links to a file
        if n % LINKS_PER_FILE == 0:
            shutil.copy(PHOTOS / "bus.jpg", source)
            os.utime(source, (SEEDED_AT.timestamp(), SEEDED_AT.timestamp()))  # long before the day: not new
            stat = os.stat(source)
            etags[n // LINKS_PER_FILE] = (f"{stat.st_size:x}-{stat.st_mtime_ns:x}", stat.st_size)
        os.link(source, path)
    day.say("seed: objects in the bucket (hard links)", f"{count:,} in {time.perf_counter() - started:.0f} s")

    started = time.perf_counter()
    ids = [catalog_key(n) for n in range(count)]
    keys = [batch_key(SEEDED_AT, number) for number in range(math.ceil(count / BATCH))]
    for start in range(0, count, 20_000):
        day.instance.add_dynamic_partitions(images.name, ids[start:start + 20_000])
    day.instance.add_dynamic_partitions(batches.name, keys)
    store, stored, collected = day.instance.event_log_storage, day.instance.handle_new_event, []
    day.instance.handle_new_event = lambda event, **_: collected.append(event)
    try:
        for stage in PIPELINE_STAGES:
            for key in keys:
                day.instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=stage, partition=key))
            for start in range(0, len(collected), 1000):
                store.store_event_batch(collected[start:start + 1000])
            collected.clear()
    finally:
        day.instance.handle_new_event = stored
    results = day.store.results
    for number, key in enumerate(keys):
        group = ids[number * BATCH:(number + 1) * BATCH]
        registrations = [RegisteredImage(partition_key=i, object_key=i, source_uri=day.store.objects.uri(i),
                                         etag=etags[n // LINKS_PER_FILE][0], size=etags[n // LINKS_PER_FILE][1],
                                         last_modified=SEEDED_AT)
                         for n, i in enumerate(group, start=number * BATCH)]
        results.write_manifests([BatchManifest(batch=key, created_at=SEEDED_AT, images=group,
                                               registrations=registrations)], threads=1)
        results.write_batch_indexed(BatchIndexed(batch=key, indexed=group))
    day.sensor("upload_sensor").cursor = UploadCursor(watermark=datetime.now(UTC), passes=1, listed_at=time.time(),
                                                last_pass_keys=count).dump()
    day.say("seed: registry, batches, a materialization per stage and batch, manifests and ledger",
            f"{count:,} images in {len(keys):,} batches in {time.perf_counter() - started:.0f} s")

    started, builds = time.perf_counter(), []
    rng = np.random.default_rng(0)
    with day.defs.resources["qdrant"].open() as index:
        index.ensure_collections(dimension, model)
        for part in chunked(range(count), 10_000):
            vectors = rng.standard_normal((2 * len(part), dimension)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            for chunk in chunked(list(zip(part, vectors[:len(part)], vectors[len(part):])), 2000):
                index.client.upsert(index.images, [qm.PointStruct(
                    id=image_point_id(catalog_key(n)), vector=image.tolist(), payload={
                        "image_id": catalog_key(n), "source_uri": f"file:///bench/{catalog_key(n)}",
                        "batch": keys[n // BATCH], "entity": [ENTITIES[n % 6]], "labels": [ENTITIES[n % 6]],
                        "needs_review": n % 7 == 0, "scene_tags": ["beach"] if n % 3 == 0 else [],
                        "embedding_model": model}) for n, image, _ in chunk])
                index.client.upsert(index.crops, [qm.PointStruct(
                    id=crop_point_id(catalog_key(n), 0), vector=crop.tolist(), payload={
                        "image_id": catalog_key(n), "batch": keys[n // BATCH], "entity": ENTITIES[n % 6],
                        "label": ENTITIES[n % 6], "labels": [ENTITIES[n % 6]], "confidence": 0.5,
                        "label_confidence": 0.5, "box": [0, 0, 10, 10], "needs_review": n % 7 == 0,
                        "embedding_model": model}) for n, _, crop in chunk])
            builds.append(sum(index.build_graph().values()))  # as build_index_graph does, once runs left 10,000
    day.say("seed: the embedded index (image and crop points, graph built every 10,000 points)",
            f"{2 * count:,} points in {time.perf_counter() - started:.0f} s; {len(builds)} builds, longest "
            f"{max(builds):.1f} s (a run's or a search's longest wait for one)")
    qdrant = day.defs.resources["qdrant"]
    merged = compact_embedded(qdrant.path, qdrant.lock_wait_seconds)  # what compact_index_op does after the builds
    day.say("seed: the sealed shards merged on copies (compact_index_op)",
            f"{len(merged)} shards in {sum(m.merge_seconds for m in merged):.0f} s, the folder held at most "
            f"{max((m.held_seconds for m in merged), default=0):.1f} s for one")


def uploads(day: Day, count: int, process_batches: int) -> list[str]:
    """New photos, registered by the listing pass and (some of their batches) processed; their image ids."""
    bucket = Path(day.store.root)
    for n in range(count):  # copies: each upload its own file, modified now
        path = bucket / f"day/{n // 1000:03d}/{n:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PHOTOS / ("bus.jpg" if n % 2 else "zidane.jpg"), path)
    ticks, requests = pass_ticks(day)
    new = [r for r in requests if r.job_name in (None, "process_images")]
    registered = sum(int(r.tags["vision_assets/images"]) for r in new)
    day.say(f"{count:,} uploads: the listing pass that registered them",
            f"{len(ticks)} ticks, {sum(ticks):.0f} s in all, longest {max(ticks):.1f} s, median "
            f"{statistics.median(ticks):.1f} s; {registered:,} images in {len(new)} batches")
    took = [day.run(request) for request in new[:process_batches]]
    per_image = sum(took) / (process_batches * BATCH)
    day.say(f"{count:,} uploads: process_images runs (tiny models)",
            f"{process_batches} of {len(new)} batches run: {statistics.median(took):.0f} s per batch of {BATCH} "
            f"({per_image * 1000:.0f} ms per image); all {registered:,}: about {per_image * registered / 60:.0f} min")
    graph_tick, result = day.tick("index_graph")
    if result.run_requests:
        day.say("index_graph sensor tick, then build_index_graph",
                f"tick {graph_tick:.2f} s; build run {day.run(result.run_requests[0], 'build_index_graph'):.1f} s")
    else:
        day.say("index_graph sensor tick", f"{graph_tick:.2f} s ({result.skip_message})")
    manifests = day.store.results.read_manifests([r.partition_key for r in new[:process_batches]])
    return [image for manifest in manifests.values() if manifest for image in manifest.images]


def pass_ticks(day: Day) -> tuple[list[float], list[dg.RunRequest]]:
    """Upload-sensor ticks until a listing pass has gone through the whole bucket."""
    ticks, requests = [], []
    while True:
        took, result = day.tick("upload_sensor")
        ticks.append(took)
        requests += result.run_requests or []
        if json.loads(day.sensor("upload_sensor").cursor).get("listing") is None:
            return ticks, requests


def verdicts(day: Day, processed: list[str], count: int) -> None:
    chosen = processed[:count]
    entries = [{"image": image, "reviewer": "bench", "decisions": [{"box": 0, "verdict": "accepted"}]}
               for image in chosen]
    folder = Path(day.store.root) / "results" / "~review" / "corrections"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "day.json").write_text(json.dumps(entries))
    took, result = day.tick("review_sensor")
    [request] = [r for r in result.run_requests if r.job_name == "apply_reviews"]
    day.say(f"{len(chosen):,} verdicts in one corrections file",
            f"review_sensor tick {took:.1f} s, apply_reviews run {day.run(request):.1f} s")


def searches(day: Day, models: dict, count: int) -> None:
    with search_service(models, day.store.results) as catalogue, serving(create_app(catalogue)) as port, \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        took = []
        for n in range(count):
            params = {"text": TEXTS[n % len(TEXTS)], "limit": 10} | (
                {"entity": "dog"} if n % 4 == 1 else {"needs_review": "true"} if n % 4 == 2 else {})
            started = time.perf_counter()
            answer = client.get("/api/search", params=params)
            took.append(time.perf_counter() - started)
            assert answer.status_code == 200, answer.text
    ordered = sorted(took)
    day.say(f"{count} searches through the service (a quarter each: none, entity, needs_review, none)",
            f"first {took[0] * 1000:.0f} ms (opens the index), then p50 {statistics.median(took[1:]) * 1000:.0f} ms, "
            f"p95 {ordered[int(0.95 * (len(ordered) - 1))] * 1000:.0f} ms")


def deletion(day: Day, count: int, catalog: int) -> None:
    bucket, first = Path(day.store.root), catalog // 2
    for n in range(first, first + count):
        (bucket / catalog_key(n)).unlink()
    ticks, requests = pass_ticks(day)
    deletes = [r for r in requests if r.job_name == "delete_images"]
    gone = sum(int(r.tags["vision_assets/deleted"]) for r in deletes)
    day.say(f"{count:,} objects deleted from the bucket: the listing pass that found them",
            f"{len(ticks)} ticks, {sum(ticks):.0f} s in all, longest {max(ticks):.1f} s; {gone:,} images to delete")
    took = [day.run(request) for request in deletes]
    day.say("  and the delete_images run(s)", f"{sum(took):.1f} s for {gone:,} images ({len(deletes)} run(s))")


def backfill(day: Day, share: float, run_batches: int) -> None:
    keys = day.instance.get_dynamic_partitions(batches.name)
    due = math.ceil(share * len(keys))
    took = [day.run(dg.RunRequest(partition_key=key)) for key in keys[len(keys) // 3:len(keys) // 3 + run_batches]]
    per_batch = statistics.median(took)
    day.say(f"a model change's backfill of {share:.0%} of the batches ({due} batches, {due * BATCH:,} images)",
            f"{run_batches} run: {per_batch:.0f} s per batch of {BATCH}; all {due}: about {per_batch * due / 60:.0f} min")


def periodic(day: Day) -> None:
    took, result = day.tick("index_repair")
    day.say("index_repair tick at this size (a 200-batch slice of the audit, forced due)",
            f"{took:.1f} s: {result.skip_message or f'{len(result.run_requests)} repair run(s)'}")


def size(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalog", type=int, default=1_000_000)
    parser.add_argument("--uploads", type=int, default=10_000)
    parser.add_argument("--process-batches", type=int, default=4)
    parser.add_argument("--verdicts", type=int, default=1000)
    parser.add_argument("--searches", type=int, default=100)
    parser.add_argument("--delete", type=int, default=1000)
    parser.add_argument("--backfill", type=float, default=0.01)
    parser.add_argument("--backfill-batches", type=int, default=1)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="soak-bench-"))
    build_offline_models(home / "models", "tiny")
    os.environ.update(VISION_ASSETS_OFFLINE_MODELS=str(home / "models"), VISION_ASSETS_DATA_DIR=str(home / "data"),
                      DAGSTER_EVENT_BATCH_SIZE="1000")
    (home / "dagster").mkdir()
    (home / "dagster" / "dagster.yaml").write_text(yaml.safe_dump({**sqlite_storage(str(home / "dagster")),
                                                                   "telemetry": {"enabled": False}}))
    store = LocalImageStore(root=str(home / "bucket"), results_prefix="results/", settle_seconds=0)
    models = model_resources_from(Settings.from_env())
    defs = build_definitions(store, models)
    print(f"soak: a catalogue of {args.catalog:,} images in {home}", flush=True)
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        day = Day(home, instance, defs, store)
        embedder = models["embedder"]
        seed(day, args.catalog, embedder.embedder.dimension, embedder.identity)
        periodic(day)
        processed = uploads(day, args.uploads, args.process_batches)
        verdicts(day, processed, args.verdicts)
        searches(day, models, args.searches)
        deletion(day, args.delete, args.catalog)
        backfill(day, args.backfill, args.backfill_batches)
    sizes = {"Dagster instance (SQLite)": home / "dagster", "embedded index": Path(models["qdrant"].path),
             "results store": home / "bucket" / "results"}
    for name, path in sizes.items():
        day.say(f"size: {name}", f"{size(path) / 2**20:,.0f} MiB")
    print(f"\nsoak at {args.catalog:,} images (2-core machine, tiny offline models, SQLite instance):")
    for what, figure in day.report:
        print(f"| {what} | {figure} |")
    shutil.rmtree(home / "bucket" / "catalog", ignore_errors=True)


if __name__ == "__main__":
    main()
