"""One upload-sensor tick when the catalogue is large: N images already registered (the `images` registry in a
SQLite instance like `vision-assets dev`'s, and their batches), their N objects in the bucket (listed, not held:
`BucketWithOldObjects`), and 1,000 new files that sort before them, so that the first slice of a listing pass (20,000
keys) registers them beside 19,000 registered objects. What could grow with N is the sensor's own work with the
registry: which listed ids are registered, which registered ids fall in the slice (for deletions), writing the
manifests, adding the partitions. Baseline in the same run: an empty catalogue. The first tick of a process used to
read the registry whole (4 s at a million images); the sensor now asks the registry through the database's index
(vision_assets/sensors/image_registry.py).

    uv run python bench/registry_tick_bench.py [--registered 0,1000000,10000000]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import bisect
import json
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
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")

from datetime import UTC, datetime

import dagster as dg
import yaml

from vision_assets.bootstrap import bootstrap
from vision_assets.event_storage import sqlite_storage
from vision_assets.partitions import batches, images
from vision_assets.resources import LocalImageStore, UploadPolicy
from vision_assets.settings import Settings
from vision_assets.vision.batches import batch_key
from vision_assets.vision.records import StoredObject
from vision_assets.vision.storage.object_store import FolderObjectStore, ListedSlice
from vision_assets.wiring import build_definitions, model_resources_from

bootstrap()  # the process set up as the code location sets up its run workers

NEW = 1000
JPEG_LIKE = b"\xff\xd8\xff\xe0" + b"\0" * 60  # the sensor never reads the bytes


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None) -> tuple[float, dg.SensorResult]:
    sensor = defs.resolve_sensor_def("upload_sensor")
    started = time.perf_counter()
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources,
                                 instance_ref=instance.get_ref()) as context:
        result = sensor.evaluate_tick(context)
    evaluated = time.perf_counter() - started
    for request in result.dynamic_partitions_requests or []:  # what the daemon does next
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return evaluated, result


OLD_KEY = "old/{:08d}.jpg"
OLD_TIME = datetime(2026, 1, 1, tzinfo=UTC)


class BucketWithOldObjects(FolderObjectStore):
    """The folder's files, and `old` objects more that it lists without holding them (`old/00000000.jpg` ...): the
    registered images' objects, as a bucket of that size has them, so that a tick lists a slice of them as it would
    (ten million files would not fit this machine's disk)."""

    def __init__(self, root: str, old: int):
        super().__init__(root)
        self.old = old

    def list_slice(self, prefix: str, start_after: str, max_objects: int) -> ListedSlice:
        real = super().list_slice(prefix, start_after, max_objects)
        first = bisect.bisect_right(range(self.old), start_after, key=OLD_KEY.format)
        virtual = [StoredObject(key=OLD_KEY.format(i), etag="old", size=64, last_modified=OLD_TIME)
                   for i in range(first, min(self.old, first + max_objects + 1))]
        merged = sorted(real.objects + virtual, key=lambda obj: obj.key)
        return ListedSlice(merged[:max_objects], real.truncated or len(merged) > max_objects)


class RegistryBucket(LocalImageStore):
    old: int = 0

    def _build_object_store(self):
        return BucketWithOldObjects(self.root, self.old)


def seed_registry(instance: dg.DagsterInstance, registered: int) -> None:
    """`registered` image ids in the registry: the rows Dagster's `add_dynamic_partitions` writes, inserted in bulk
    (ten million through the API would take most of an hour)."""
    import sqlalchemy as db
    from dagster._core.storage.event_log.schema import DynamicPartitionsTable

    storage = instance.event_log_storage
    storage.get_dynamic_partitions(images.name)  # makes the table exist, as Dagster would
    with storage.index_connection() as conn:
        for start in range(0, registered, 100_000):
            conn.execute(db.insert(DynamicPartitionsTable), [
                {"partitions_def_name": images.name, "partition": OLD_KEY.format(i)}
                for i in range(start, min(registered, start + 100_000))])


def measure(registered: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"registry-tick-{registered}-"))
    (home / "dagster.yaml").write_text(yaml.safe_dump({**sqlite_storage(str(home)), "telemetry": {"enabled": False}}))
    bucket = home / "bucket"
    os.environ["VISION_ASSETS_DATA_DIR"] = str(home / "data")
    store = RegistryBucket(root=str(bucket), results_prefix="results/", settle_seconds=0, old=registered)
    defs = build_definitions(store, model_resources_from(Settings.from_env()), UploadPolicy(batch_size=256))
    row = {"registered": registered}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        started = time.perf_counter()
        seed_registry(instance, registered)
        instance.add_dynamic_partitions(batches.name, [batch_key(OLD_TIME, n) for n in range(-(-registered // 256))])
        row["seeding"] = time.perf_counter() - started
        # A cursor that has seen the old images (a tick after the move to batches, or weeks of uploads), that keeps
        # the slugged ids apart already and whose ten-minute look for empty batches is not due (the seeded batches
        # have no manifests: that look would remove them).
        cursor = json.dumps({"migration": {"started_at": "2026-01-01T00:00:00Z", "legacy_images": 0},
                             "watermark": "2026-01-01T00:00:00Z", "floor": OLD_TIME.timestamp(),
                             "slugged_kept": True, "swept_at": time.time()})
        # Each round: 1,000 new files that sort before the old objects, so the first slice of a listing pass (20,000
        # keys: them and 19,000 old objects) registers them; the second round starts a new pass.
        for round_number, folder_name in (("first", "a-new"), ("later", "b-new")):
            folder = bucket / folder_name
            folder.mkdir(parents=True)
            for index in range(NEW):
                (folder / f"new-{index:05d}.jpg").write_bytes(JPEG_LIKE)
            row[round_number], result = tick(defs, instance, cursor)
            cursor = json.dumps({**json.loads(result.cursor), "listing": None})
            assert len(result.run_requests) == -(-NEW // 256), result
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registered", default="0,1000000,10000000")
    args = parser.parse_args()
    rows = [measure(int(n)) for n in args.registered.split(",")]
    base = rows[0]
    print(f"an upload-sensor tick registering {NEW:,} new images (folder store, SQLite instance, 2-core machine)")
    for row in rows:
        print(f"  {row['registered']:>9,} registered: first tick of the process {row['first']:6.2f} s "
              f"({row['first'] / base['first']:4.1f}x), a later tick {row['later']:6.2f} s "
              f"({row['later'] / base['later']:4.1f}x)   (seeded in {row['seeding']:.0f} s)")


if __name__ == "__main__":
    main()
