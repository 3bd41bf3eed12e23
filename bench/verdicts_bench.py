"""How long N reviewers' verdicts take to reach the index and the checks: the `review_sensor` ticks reading a
corrections file of N images (stored as each image's `~review.json`; a file of more than ENTRIES_PER_TICK entries
is applied a slice a tick) and the `apply_reviews` run each asks for (every image's points written again, its
batch's label checks judged again). The images are real pipeline results
(one batch of photos through the tiny offline models), copied under N ids in batches of 256, each batch materialized
as the pipeline leaves it; folder store, embedded Qdrant, a SQLite instance like `vision-assets dev`'s. Baseline in
the same run: the smallest N.

    uv run python bench/verdicts_bench.py [--verdicts 100,1000,10000,100000]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
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
import ultralytics
import yaml

from vision_assets.bootstrap import bootstrap
from vision_assets.event_storage import sqlite_storage
from vision_assets.keys import SPECIALIST_LABELS
from vision_assets.partitions import batches, images
from vision_assets.resources import LocalImageStore
from vision_assets.sensors import review_sensor
from vision_assets.settings import Settings
from vision_assets.tools.offline_models import build_offline_models
from vision_assets.vision.batches import BatchManifest, batch_key
from vision_assets.wiring import build_definitions, model_resources_from

bootstrap()  # the process set up as the code location sets up its run workers

PHOTOS = Path(ultralytics.__file__).parent / "assets"
PER_IMAGE = ["~source.json", "~detections.json", "~embeddings.json", "~embeddings.npz", "~labels.json", "~index.json"]


def processed_templates(home: Path) -> tuple[Path, list[str]]:
    """Two photos through the whole pipeline once; their result folders are the templates."""
    models_folder = home / "models"
    build_offline_models(models_folder, "tiny")
    os.environ["VISION_ASSETS_OFFLINE_MODELS"] = str(models_folder)
    os.environ["VISION_ASSETS_DATA_DIR"] = str(home / "template-data")
    store = LocalImageStore(root=str(home / "template-bucket"), results_prefix="results/", settle_seconds=0)
    for name in ("bus.jpg", "zidane.jpg"):
        (home / "template-bucket").mkdir(exist_ok=True)
        shutil.copy(PHOTOS / name, home / "template-bucket" / name)
    defs = build_definitions(store, model_resources_from(Settings.from_env()))
    (home / "template-instance").mkdir()
    with dg.instance_for_test(temp_dir=str(home / "template-instance")) as instance:
        sensor = defs.resolve_sensor_def("upload_sensor")
        with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources,
                                     instance_ref=instance.get_ref()) as context:
            result = sensor.evaluate_tick(context)
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        [request] = result.run_requests
        assert defs.resolve_job_def("process_images").execute_in_process(
            instance=instance, partition_key=request.partition_key).success
    return home / "template-bucket" / "results", ["bus.jpg", "zidane.jpg"]


def seeded(home: Path, templates: Path, names: list[str], count: int) -> tuple[dg.Definitions, list[str], str]:
    """`count` processed images (copies of the templates) in batches of 256, and a corrections file for all."""
    results = home / "bucket" / "results"
    ids = [f"copy/{i:06d}.jpg" for i in range(count)]
    when = datetime(2026, 12, 5, 13, 5, 41, tzinfo=UTC)
    keys = [batch_key(when, n) for n in range(-(-count // 256))]
    for number, image in enumerate(ids):
        template = templates / names[number % len(names)]
        folder = results / image
        folder.mkdir(parents=True)
        for name in PER_IMAGE:
            data = (template / name).read_bytes()
            if name.endswith(".json"):
                record = json.loads(data)
                record["partition_key"] = image
                if name == "~source.json":
                    record["batch"] = keys[number // 256]
                data = json.dumps(record).encode()
            (folder / name).write_bytes(data)
        shutil.copy(template.parent / names[number % len(names)] / "~normalized.jpg", folder / "~normalized.jpg")
    manifests = [BatchManifest(batch=key, created_at=when, images=ids[n * 256:(n + 1) * 256])
                 for n, key in enumerate(keys)]
    (results / "~batches").mkdir(parents=True)
    for manifest in manifests:
        (results / "~batches" / f"{manifest.batch}.json").write_text(manifest.model_dump_json())
    corrections = [{"image": image, "reviewer": "bench", "decisions": [{"box": 0, "verdict": "accepted"}]}
                   for image in ids]
    (results / "~review" / "corrections").mkdir(parents=True)
    (results / "~review" / "corrections" / "verdicts.json").write_text(json.dumps(corrections))
    os.environ["VISION_ASSETS_DATA_DIR"] = str(home / "data")
    store = LocalImageStore(root=str(home / "bucket"), results_prefix="results/", settle_seconds=0)
    return build_definitions(store, model_resources_from(Settings.from_env())), keys, str(results)


def measure(templates: Path, names: list[str], count: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"verdicts-bench-{count}-"))
    (home / "dagster.yaml").write_text(yaml.safe_dump({**sqlite_storage(str(home)), "telemetry": {"enabled": False}}))
    defs, keys, _ = seeded(home, templates, names, count)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        ids = [f"copy/{i:06d}.jpg" for i in range(count)]
        for start in range(0, count, 20_000):
            instance.add_dynamic_partitions(images.name, ids[start:start + 20_000])
        instance.add_dynamic_partitions(batches.name, keys)
        for key in keys:  # as the pipeline leaves each batch: specialist_labels materialized (the checks' target)
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=SPECIALIST_LABELS, partition=key))
        sensor = defs.resolve_sensor_def("review_sensor")
        # Ticks until the file is applied (more than ENTRIES_PER_TICK entries: a slice a tick), each tick's run
        # executed before the next tick, the cursor carried as the daemon carries it.
        cursor, ticks, applied, runs, judged_batches = None, [], 0, 0.0, set()
        while True:
            started = time.perf_counter()
            with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources,
                                         instance_ref=instance.get_ref(), cursor=cursor) as context:
                result = sensor.evaluate_tick(context)
            ticks.append(time.perf_counter() - started)
            cursor = result.cursor or cursor
            requests = [r for r in result.run_requests if r.job_name == "apply_reviews"]
            if not requests and applied >= count:
                break
            for request in requests:
                started = time.perf_counter()
                run = defs.resolve_job_def("apply_reviews").execute_in_process(instance=instance,
                                                                               run_config=request.run_config)
                runs += time.perf_counter() - started
                assert run.success
                [event] = run.get_asset_materialization_events()
                applied += event.materialization.metadata["applied"].value
                judged_batches |= {e.partition for e in run.get_asset_check_evaluations()}
        assert applied == count and len(judged_batches) == len(keys)  # every verdict, every batch judged again
    return {"count": count, "tick": sum(ticks), "longest": max(ticks), "ticks": len(ticks), "run": runs,
            "batches": len(keys)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--verdicts", default="100,1000,10000")
    args = parser.parse_args()
    templates, names = processed_templates(Path(tempfile.mkdtemp(prefix="verdicts-bench-templates-")))
    rows = [measure(templates, names, int(n)) for n in args.verdicts.split(",")]
    base = rows[0]
    print("N verdicts (one corrections file) to the index and the checks: review_sensor ticks (a slice of "
          f"{review_sensor.ENTRIES_PER_TICK:,} entries a tick) and their apply_reviews runs (folder store, embedded "
          "Qdrant, SQLite instance, 2-core machine)")
    for row in rows:
        total = row["tick"] + row["run"]
        print(f"  {row['count']:>7,} verdicts in {row['batches']:>3} batches: {row['ticks']} tick(s), "
              f"{row['tick']:6.1f} s (longest {row['longest']:5.1f} s), runs {row['run']:6.1f} s, total "
              f"{total:6.1f} s = {1000 * total / row['count']:5.1f} ms per verdict "
              f"({(total / row['count']) / ((base['tick'] + base['run']) / base['count']):4.2f}x the baseline's)")


if __name__ == "__main__":
    main()
