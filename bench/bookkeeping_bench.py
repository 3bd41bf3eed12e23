"""What a batched `process_images` run spends besides the models: Dagster's events and metadata, the results store,
Qdrant; on the SQLite instance `vision-assets dev` uses and on a Postgres one (started here on loopback), on an
empty catalogue and on one that already holds many registered images (in batches of 256) and indexed points.

    uv run python bench/bookkeeping_bench.py [--images 256] [--backends sqlite,postgres] [--catalog 0,10000]

Per image it prints: events stored by type, bytes of event log, seconds in event storage, in metadata calls and in instance queries
(together: Dagster's bookkeeping), in the results store (reads, writes, decoding), in Qdrant calls, in the models,
and what is left (Dagster's step machinery and our own Python). Tiny offline models (random weights). Not part of
the test suite."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="bench-ultralytics-"))
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

from datetime import UTC

import dagster as dg
import numpy as np
import yaml

from bench.meter import Meter
from bench.pipeline_bench import make_images, register_uploads
from tests.postgres_server import PostgresUnavailable, create_database, postgres_server
from vision_assets.bootstrap import bootstrap
from vision_assets.cli import instance_yaml as dev_instance_yaml
from vision_assets.partitions import batches as batch_partitions
from vision_assets.partitions import images as images_partitions
from vision_assets.resources import LocalImageStore, UploadPolicy
from vision_assets.settings import Settings
from vision_assets.tools.offline_models import build_offline_models
from vision_assets.vision.batches import BatchIndexed, batch_key
from vision_assets.vision.index.vector_index import crop_point_id, image_point_id
from vision_assets.vision.models.base import Model
from vision_assets.vision.models.classifier import ImageClassifier
from vision_assets.vision.models.detector import YoloDetector
from vision_assets.vision.models.embedder import ClipEmbedder
from vision_assets.vision.storage.results_store import ResultsStore
from vision_assets.wiring import build_definitions, model_resources_from

bootstrap()  # the process set up as the code location sets up its run workers


def postgres_yaml(user: str, port: int, db: str) -> str:
    """deploy/dagster.yaml's storage, pointed at the bench's server."""
    config = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    server = {"hostname": "127.0.0.1", "port": port, "username": user, "password": "", "db_name": db,
              "scheme": "postgresql+psycopg2"}
    storage = {key: config[key] | {"config": {"postgres_db": server}}
               for key in ("run_storage", "event_log_storage", "schedule_storage")}
    return yaml.safe_dump(storage)

RESULTS_CALLS = ("write", "read", "read_normalized", "read_image", "write_arrays", "read_arrays", "_write_jpeg")
QDRANT_CALLS = ("upsert", "delete", "scroll", "retrieve", "count", "collection_exists", "get_collection",
                "create_collection", "create_payload_index")
INSTANCE_QUERIES = ("fetch_materializations", "get_dynamic_partitions", "get_runs", "get_run_records",
                    "get_materialized_partitions", "add_run_tags")


def instance_yaml(home: Path, backend: str, postgres: tuple[str, int] | None, db: str) -> str:
    """`vision-assets dev`'s instance; with Postgres, deploy/dagster.yaml's storage instead of its SQLite."""
    config = yaml.safe_load(dev_instance_yaml(home, max_runs=4, run_retries=0))
    if backend == "postgres":
        config = {k: v for k, v in config.items() if not k.endswith("_storage")}
        config |= yaml.safe_load(postgres_yaml(*postgres, db))
    if os.environ.get("BENCH_DAGSTER_STORAGE") == "dagster":  # Dagster's own classes, for comparison
        config["event_log_storage"] |= (
            {"module": "dagster_postgres.event_log", "class": "PostgresEventLogStorage"} if backend == "postgres"
            else {"module": "dagster._core.storage.event_log", "class": "SqliteEventLogStorage"})
    return yaml.safe_dump(config)


def seed_catalog(instance: dg.DagsterInstance, defs: dg.Definitions, size: int, points_per_image: int) -> float:
    """`size` registered images (older than the run's) in batches of 256, each batch's index ledger (what the
    run's `index_complete` samples), and `points_per_image` points for each image in Qdrant."""
    from datetime import datetime

    started = time.perf_counter()
    keys = [f"catalog/{i:07d}.jpg" for i in range(size)]
    for start in range(0, size, 10_000):
        instance.add_dynamic_partitions(images_partitions.name, keys[start:start + 10_000])
    old = datetime(2026, 1, 1, tzinfo=UTC)
    batches = [batch_key(old, n) for n in range(-(-size // 256))]
    instance.add_dynamic_partitions(batch_partitions.name, batches)
    results = defs.resources["image_store"].results
    for number, batch in enumerate(batches):
        results.write_batch_indexed(BatchIndexed(batch=batch, indexed=keys[number * 256:(number + 1) * 256]))
    if size and points_per_image:
        from qdrant_client import models

        embedder = defs.resources["embedder"]
        dimension, model = embedder.embedder.dimension, embedder.identity
        rng = np.random.default_rng(0)
        with defs.resources["qdrant"].open() as index:
            index.ensure_collections(dimension, model)
            for start in range(0, size, 1000):
                chunk = keys[start:start + 1000]
                vectors = rng.normal(size=(len(chunk) * points_per_image, dimension)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                rows = iter(vectors.tolist())
                images = [models.PointStruct(id=image_point_id(k), vector=next(rows),
                                             payload={"image_id": k, "embedding_model": model}) for k in chunk]
                crops = [models.PointStruct(id=crop_point_id(k, c), vector=next(rows),
                                            payload={"image_id": k, "embedding_model": model})
                         for k in chunk for c in range(points_per_image - 1)]
                index.client.upsert(index.images, images, wait=True)
                if crops:
                    index.client.upsert(index.crops, crops, wait=True)
    return time.perf_counter() - started


def meter_everything(meter: Meter, instance: dg.DagsterInstance) -> None:
    meter.count_events(instance.event_log_storage)
    meter.wrap(dg.AssetExecutionContext, "add_asset_metadata", "metadata calls")
    for name in INSTANCE_QUERIES:
        meter.wrap(instance, name, "instance queries")
    meter.wrap(instance.event_log_storage, "get_asset_check_partition_info", "instance queries")
    for name in RESULTS_CALLS:
        meter.wrap(ResultsStore, name, "results store")
    from qdrant_client import QdrantClient

    from vision_assets.vision.index.edge import EdgeClient

    for client_class in (QdrantClient, EdgeClient):  # a server, and the embedded index
        for name in QDRANT_CALLS:
            if hasattr(client_class, name):
                meter.wrap(client_class, name, "qdrant")
    meter.wrap(EdgeClient, "open_existing", "qdrant open")
    meter.wrap(YoloDetector, "detect", "models")
    meter.wrap(ClipEmbedder, "embed_images", "models")
    meter.wrap(ClipEmbedder, "prompt_vectors", "models")
    meter.wrap(ImageClassifier, "classify", "models")


def one_scenario(work: Path, backend: str, catalog: int, args, postgres) -> dict:
    name = f"{backend}-{catalog}"
    data = work / name
    bucket = data / "bucket"
    (bucket / "in").mkdir(parents=True)
    for source in (work / "photos").iterdir():
        os.link(source, bucket / "in" / source.name)
    home = data / "dagster"
    home.mkdir()
    db = f"bench_{uuid.uuid4().hex[:8]}"
    if backend == "postgres":
        create_database(*postgres, db)
    (home / "dagster.yaml").write_text(instance_yaml(home, backend, postgres, db))
    os.environ["VISION_ASSETS_DATA_DIR"] = str(data)
    settings = Settings.from_env()
    store = LocalImageStore(root=str(bucket), results_prefix="results/", settle_seconds=0)
    defs = build_definitions(store, model_resources_from(settings), UploadPolicy(batch_size=100_000,
                                                                                  max_uploads_per_tick=100_000))
    job = defs.resolve_job_def("process_images")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        seeding = seed_catalog(instance, defs, catalog, args.points_per_image)
        keys, tags = register_uploads(defs, instance)
        meter, loads = Meter(), Meter()
        meter_everything(meter, instance)
        loads.wrap(Model, "load", "model loading")
        with meter.installed(), loads.installed():
            started = time.perf_counter()
            result = job.execute_in_process(instance=instance, tags=tags)
            wall = time.perf_counter() - started
        assert result.success, f"{name}: the run failed"
        from dagster._serdes import serialize_value  # how the event log stores each entry

        stored = instance.get_records_for_run(result.run_id, limit=1_000_000).records
        log_bytes = sum(len(serialize_value(r.event_log_entry)) for r in stored)
    return {"name": name, "images": len(keys), "wall": wall, "meter": meter, "loading": loads.seconds["model loading"],
            "seeding": seeding, "log_bytes": log_bytes, "run_events": len(stored)}


def report(row: dict) -> None:
    n, meter = row["images"], row["meter"]
    ms = lambda seconds: 1000 * seconds / n
    seconds = meter.seconds
    bookkeeping = seconds["event storage"] + seconds["metadata calls"] + seconds["instance queries"]
    models = seconds["models"] - row["loading"]
    known = sum(seconds.values()) - row["loading"]
    print(f"\n{row['name']}: {n} images, wall {row['wall']:.1f} s = {ms(row['wall']):.1f} ms/img "
          f"(catalogue seeded in {row['seeding']:.0f} s; model loading {row['loading']:.1f} s, not counted below)")
    events = sum(meter.events.values())
    print(f"  the run's event log      {row['run_events']} events, {row['log_bytes'] / 1024:.0f} KB = "
          f"{row['run_events'] / n:.3f} events/img, {row['log_bytes'] / n:.0f} bytes/img")
    print(f"  events stored            {events / n:6.2f} /img  "
          + ", ".join(f"{kind} {count / n:.2f}" for kind, count in meter.events.most_common()))
    for label, value, calls in [
        ("event storage", seconds["event storage"], meter.calls["event storage"]),
        ("metadata calls", seconds["metadata calls"], meter.calls["metadata calls"]),
        ("instance queries", seconds["instance queries"], meter.calls["instance queries"]),
        ("= Dagster bookkeeping", bookkeeping, None),
        ("results store", seconds["results store"], meter.calls["results store"]),
        ("qdrant", seconds["qdrant"], meter.calls["qdrant"]),
        ("qdrant open", seconds["qdrant open"], meter.calls["qdrant open"]),
        ("models (excl. loading)", models, meter.calls["models"]),
        ("everything else", row["wall"] - row["loading"] - known, None),
    ]:
        per_call = f"  {calls} calls, {1000 * value / calls:.2f} ms/call" if calls else ""
        print(f"  {label:24s} {ms(value):7.2f} ms/img{per_call}")
        category = {"models (excl. loading)": "models"}.get(label, label)
        if category in ("instance queries", "models") and calls:
            print("    " + ", ".join(f"{function} {ms(spent):.2f}"
                                     for function, spent in meter.by_name[category].most_common()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--catalog", default="0,100000", help="registered images before the run, comma-separated")
    parser.add_argument("--points-per-image", type=int, default=2, help="Qdrant points seeded per catalogue image")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bookkeeping-bench-"))
    (work / "photos").mkdir()
    make_images(work / "photos", args.images)
    build_offline_models(work / "models", "tiny")
    os.environ["VISION_ASSETS_OFFLINE_MODELS"] = str(work / "models")
    os.environ.setdefault("VISION_ASSETS_DEVICE", "cpu")
    sizes = [int(s) for s in args.catalog.split(",")]
    rows = []
    for backend in args.backends.split(","):
        measured = []
        if backend == "postgres":
            try:
                with postgres_server() as server:
                    measured = [one_scenario(work, backend, size, args, server) for size in sizes]
            except PostgresUnavailable as error:
                print(f"postgres skipped: {error}")
        else:
            measured = [one_scenario(work, backend, size, args, None) for size in sizes]
        for row in measured:
            report(row)
        rows += measured
    print("\nPer image, ms (wall | Dagster bookkeeping | models) and the run's event log per image:")
    for row in rows:
        n, s = row["images"], row["meter"].seconds
        book = s["event storage"] + s["metadata calls"] + s["instance queries"]
        print(f"  {row['name']:16s} {1000 * row['wall'] / n:8.1f} | {1000 * book / n:7.2f} | "
              f"{1000 * (s['models'] - row['loading']) / n:7.1f}   {row['run_events'] / n:.3f} events, "
              f"{row['log_bytes'] / n:.0f} bytes")


if __name__ == "__main__":
    main()
