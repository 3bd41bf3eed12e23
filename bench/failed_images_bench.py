"""What finding the Failed images costs as the catalogue grows, on an instance holding N images that every stage
materialized plus one failed run over 100 of them: a sensor tick of `failed_image_retry` / `index_repair` (the
registered partitions, then a `FailureWatch` look from the previous tick's cursor), the first look from no cursor
(what `vision-assets reindex` does), Dagster's per-partition latest attempts over every stage (what the sensors read
before the watch), and `index_ledger` (index_repair's ten-minute audit). The baseline is the smallest catalogue,
measured in the same invocation. Not part of the test suite.

    uv run python bench/failed_images_bench.py [--catalog 1000,10000,100000] [--backend sqlite]
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

import dagster as dg  # noqa: E402

from vision_assets.checks.indexing import index_consistency, index_ledger  # noqa: E402
from vision_assets.event_storage import sqlite_storage  # noqa: E402
from vision_assets.partitions import images  # noqa: E402
from vision_assets.sensors.failures import PIPELINE_STAGES, FailureWatch, failed_images  # noqa: E402

FAILED = 100


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


def seed(instance: dg.DagsterInstance, size: int) -> list[str]:
    """`size` images, each materialized by every stage with a passed `indexed` check, written as Dagster builds
    those events, a thousand per transaction."""
    keys = [f"catalog/{i:07d}.jpg" for i in range(size)]
    for start in range(0, size, 10_000):
        instance.add_dynamic_partitions(images.name, keys[start:start + 10_000])
    stored, collected = instance.handle_new_event, []
    instance.handle_new_event = lambda event, **_: collected.append(event)
    try:
        for key in keys:
            for stage in PIPELINE_STAGES:
                instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=stage, partition=key))
            instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                asset_key=index_consistency.asset, check_name=index_consistency.name, passed=True, partition=key))
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
    parser.add_argument("--catalog", default="1000,10000,100000")
    args = parser.parse_args()
    defs = stand_in_stages()
    rows = []
    for size in map(int, args.catalog.split(",")):
        home = Path(tempfile.mkdtemp(prefix=f"failed-images-bench-{size}-"))
        with dg.instance_for_test(temp_dir=str(home), overrides=sqlite_storage(str(home))) as instance:
            started = time.perf_counter()
            keys = seed(instance, size)
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
            assert {f.partition_key for f in found} == set(failed_range), found[:3]
            assert {f.stage for f in found} == {"source_images"}, {f.stage for f in found}
            watch = FailureWatch()
            watch.look(instance, registered)

            def tick():
                FailureWatch(watch.state()).look(instance, set(instance.get_dynamic_partitions(images.name)))

            def every_partitions_latest_attempt():
                for stage in PIPELINE_STAGES:
                    instance.event_log_storage.get_latest_asset_partition_materialization_attempts_without_materializations(stage)

            rows.append({"size": size, "seeding": seeding, "tick": timed(tick),
                         "first_look": timed(lambda: failed_images(instance, registered)),
                         "scan": timed(every_partitions_latest_attempt),
                         "index_ledger": timed(lambda: index_ledger(instance))})
    base = rows[0]
    print(f"finding {FAILED} failed images among N (SQLite, best of 3, 2-core machine, ms)")
    for row in rows:
        print(f"  N={row['size']:>7,}: sensor tick {row['tick'] * 1000:6.0f} ({row['tick'] / base['tick']:4.1f}x)   "
              f"first look {row['first_look'] * 1000:6.0f} ({row['first_look'] / base['first_look']:4.1f}x)   "
              f"every partition's latest attempt {row['scan'] * 1000:6.0f} ({row['scan'] / base['scan']:5.1f}x)   "
              f"index_ledger {row['index_ledger'] * 1000:6.0f}   (seeded in {row['seeding']:.0f} s)")

if __name__ == "__main__":
    main()
