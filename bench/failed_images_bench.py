"""What finding the Failed batches costs as the catalogue grows, on an instance holding N images in batches of 256
that every stage materialized plus one failed run over the last batch: a sensor tick of `failed_image_retry` /
`index_repair` (the registered batches, then a `FailureWatch` look from the previous tick's cursor), the first look
from no cursor (what `vision-assets reindex` does), Dagster's per-partition latest attempts over every stage (what
the sensors read before the watch), and `index_ledger` (index_repair's ten-minute audit, one small file per batch,
folder store). The baseline is the smallest catalogue, measured in the same invocation. Not part of the test suite.

    uv run python bench/failed_images_bench.py [--catalog 10000,100000,1000000]
"""

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from datetime import UTC

import dagster as dg

from vision_assets.event_storage import sqlite_storage
from vision_assets.keys import PIPELINE_STAGES
from vision_assets.partitions import batches as images
from vision_assets.sensors.failures import FailureWatch
from vision_assets.sensors.failures import failed_batches as failed_images
from vision_assets.vision.batches import BatchIndexed, batch_key
from vision_assets.vision.index.ledger import index_ledger
from vision_assets.vision.storage.object_store import FolderObjectStore
from vision_assets.vision.storage.results_store import ResultsStore

FAILED = 1  # batches
BATCH_SIZE = 256


def stand_in_stages() -> dg.Definitions:
    """Assets with the pipeline's keys and partitions, whose first stage fails: a failed batched run as the real
    one leaves it (planned materializations of every stage, none done)."""
    def stage(key: dg.AssetKey, upstream: dg.AssetKey | None):
        @dg.asset(key=key, partitions_def=images, deps=[upstream] if upstream else [],
                  backfill_policy=dg.BackfillPolicy.single_run())
        def _stage(context):
            raise RuntimeError("the worker died")
        return _stage

    assets = [stage(key, PIPELINE_STAGES[i - 1] if i else None) for i, key in enumerate(PIPELINE_STAGES)]
    return dg.Definitions(assets=assets, jobs=[dg.define_asset_job("stages", selection=PIPELINE_STAGES)])


def seed(instance: dg.DagsterInstance, results: ResultsStore, size: int) -> list[str]:
    """`size` images in batches, each batch materialized by every stage with its index ledger written, the events
    built as Dagster builds them, a thousand per transaction."""
    from datetime import datetime

    old = datetime(2026, 1, 1, tzinfo=UTC)
    keys = [batch_key(old, n) for n in range(-(-size // BATCH_SIZE))]
    instance.add_dynamic_partitions(images.name, keys)
    for key in keys:
        results.write_batch_indexed(BatchIndexed(batch=key, indexed=[f"{key}/{i}.jpg" for i in range(BATCH_SIZE)]))
    stored, collected = instance.handle_new_event, []
    instance.handle_new_event = lambda event, **_: collected.append(event)
    try:
        for key in keys:
            for stage in PIPELINE_STAGES:
                instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=stage, partition=key))
    finally:
        instance.handle_new_event = stored
    for start in range(0, len(collected), 1000):
        instance.event_log_storage.store_event_batch(collected[start:start + 1000])
    return keys


def timed(call, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalog", default="10000,100000,1000000")
    args = parser.parse_args()
    defs = stand_in_stages()
    rows = []
    for size in map(int, args.catalog.split(",")):
        home = Path(tempfile.mkdtemp(prefix=f"failed-images-bench-{size}-"))
        with dg.instance_for_test(temp_dir=str(home), overrides=sqlite_storage(str(home))) as instance:
            started = time.perf_counter()
            results = ResultsStore(FolderObjectStore(home / "bucket"), "results/")
            keys = seed(instance, results, size)
            seeding = time.perf_counter() - started
            failed_range = keys[-FAILED:]
            run = defs.resolve_job_def("stages").execute_in_process(
                instance=instance, raise_on_error=False,  # the failure is the point: keep its traceback quiet
                run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
                tags={"dagster/asset_partition_range_start": failed_range[0],
                      "dagster/asset_partition_range_end": failed_range[-1]})
            assert not run.success
            registered = set(instance.get_dynamic_partitions(images.name))
            found = failed_images(instance, registered)
            assert {f.batch for f in found} == set(failed_range), found[:3]
            assert {f.stage for f in found} == {"source_images"}, {f.stage for f in found}
            watch = FailureWatch()
            watch.look(instance, registered)

            def tick():
                FailureWatch(watch.cursor).look(instance, set(instance.get_dynamic_partitions(images.name)))

            def every_partitions_latest_attempt():
                for stage in PIPELINE_STAGES:
                    instance.event_log_storage.get_latest_asset_partition_materialization_attempts_without_materializations(stage)

            rows.append({"size": size, "seeding": seeding, "tick": timed(tick),
                         "first_look": timed(lambda: failed_images(instance, registered)),
                         "scan": timed(every_partitions_latest_attempt),
                         "index_ledger": timed(lambda: index_ledger(results, keys))})
    base = rows[0]
    print(f"finding {FAILED} failed batch among N images in batches of {BATCH_SIZE} (SQLite, best of 3, 2-core "
          "machine, ms)")
    for row in rows:
        print(f"  N={row['size']:>7,}: sensor tick {row['tick'] * 1000:6.0f} ({row['tick'] / base['tick']:4.1f}x)   "
              f"first look {row['first_look'] * 1000:6.0f} ({row['first_look'] / base['first_look']:4.1f}x)   "
              f"every partition's latest attempt {row['scan'] * 1000:6.0f} ({row['scan'] / base['scan']:5.1f}x)   "
              f"index_ledger {row['index_ledger'] * 1000:6.0f}   (seeded in {row['seeding']:.0f} s)")

if __name__ == "__main__":
    main()
