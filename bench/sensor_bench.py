"""How long one upload-sensor tick takes to register a burst of new objects in an S3 bucket (moto's server on
loopback, real HTTP, real boto3), on a persistent SQLite instance like the one `vision-assets dev` uses.

    uv run python bench/sensor_bench.py [--objects 10000,50000] [--max-uploads-per-tick 0]

For each burst size it prints: the sensor evaluation (listing, planning, manifests written, run requests built),
then what the daemon does with the result (adding the partitions), the cursor's size, and the manifest PUTs.
Baseline, measured in the same run: listing the bucket alone. Dagster times a sensor evaluation out at 60 s.
`--max-uploads-per-tick 0` lifts the cap so the whole burst is one tick. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
for name, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                    "DAGSTER_DISABLE_TELEMETRY": "1"}.items():
    os.environ.setdefault(name, value)

import boto3
import dagster as dg
from moto.server import ThreadedMotoServer

from bench.meter import Meter
from tests.conftest import free_port
from vision_assets.bootstrap import bootstrap
from vision_assets.event_storage import sqlite_storage
from vision_assets.resources import S3Connection, S3ImageStore, UploadPolicy
from vision_assets.settings import Settings
from vision_assets.vision.storage.object_store import S3ObjectStore
from vision_assets.vision.storage.results_store import ResultsStore
from vision_assets.wiring import build_definitions, model_resources_from

bootstrap()  # the process set up as the code location sets up its run workers

JPEG_LIKE = b"\xff\xd8\xff\xe0" + b"\0" * 60  # the sensor never reads the bytes


def fill_bucket(endpoint: str, bucket: str, count: int) -> None:
    """Objects put through moto's backend directly: the burst is the subject, not how long it took to upload."""
    from moto.s3.models import s3_backends

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    backend = s3_backends[client.get_caller_identity()["Account"] if hasattr(client, "get_caller_identity")
                          else "123456789012"]["global"]
    for index in range(count):
        backend.put_object(bucket, f"in/burst/{index // 1000:03d}/photo-{index:06d}.jpg", JPEG_LIKE)


def tick(endpoint: str, bucket: str, home: Path, max_uploads: int) -> dict[str, float]:
    s3 = S3Connection(endpoint_url=endpoint, region_name="us-east-1")
    store = S3ImageStore(s3=s3, bucket=bucket, prefix="in/", results_prefix="results/")
    defs = build_definitions(store, model_resources_from(Settings.from_env()), UploadPolicy(max_uploads_per_tick=max_uploads))
    sensor = defs.resolve_sensor_def("upload_sensor")
    meter, puts = Meter(), Meter()
    meter.wrap(ResultsStore, "write_manifests", "manifests")
    puts.wrap(S3ObjectStore, "put", "PUT")
    figures: dict[str, float] = {}
    with dg.instance_for_test(temp_dir=str(home), overrides=sqlite_storage(str(home))) as instance:
        started = time.perf_counter()
        objects = sum(1 for _ in store.objects.list("in/"))
        figures["list alone"] = time.perf_counter() - started
        with dg.build_sensor_context(instance=instance, resources=defs.resources, definitions=defs) as context:
            with meter.installed(), puts.installed():
                started = time.perf_counter()
                result = sensor(context)
                figures["sensor evaluation"] = time.perf_counter() - started
            started = time.perf_counter()
            for request in result.dynamic_partitions_requests:  # what the daemon does with the result
                if isinstance(request, dg.AddDynamicPartitionsRequest):
                    instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            figures["daemon: add partitions"] = time.perf_counter() - started
        figures["registered"] = len(instance.get_dynamic_partitions("images"))
        figures["objects"] = objects
        figures["run requests"] = len(result.run_requests)
        figures["cursor bytes"] = len(result.cursor or "")
        figures["writing manifests"] = meter.seconds["manifests"]
        figures["PUTs"] = puts.calls["PUT"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", default="10000,50000")
    parser.add_argument("--max-uploads-per-tick", type=int, default=0, help="0: no cap, the whole burst in one tick")
    args = parser.parse_args()
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for count in (int(c) for c in args.objects.split(",")):
            bucket = f"burst-{count}"
            fill_bucket(endpoint, bucket, count)
            with tempfile.TemporaryDirectory(prefix="sensor-bench-") as home:
                figures = tick(endpoint, bucket, Path(home), args.max_uploads_per_tick or 10 * count)
            evaluation = figures["sensor evaluation"]
            print(f"\n{count:,} new objects, one tick (Dagster times a sensor evaluation out at 60 s):")
            for name, value in figures.items():
                print(f"  {name:28s} {value:10.2f}" if isinstance(value, float) and value != int(value)
                      else f"  {name:28s} {int(value):10d}")
            print(f"  evaluation / listing alone  {evaluation / figures['list alone']:10.1f}x")
            print(f"  objects per second          {count / evaluation:10.0f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
