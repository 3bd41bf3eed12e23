"""No model paid twice for the same bytes: one `process_images` run over N photos (the baseline, measured in the same
run of this bench), then a run over the same N photos uploaded again under other names (their results copied),
then one over N re-encoded copies (near duplicates: other bytes, processed as usual). Folder store, embedded index,
offline models (tiny by default), models in the run's process. Prints each run's seconds, images/s, the model
seconds the index stage recorded, and the ratio to the baseline. Not part of the test suite.

    uv run python bench/reuse_bench.py [--images 24] [--size tiny|full] [--models DIR]
"""

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dagster as dg
from pipeline_bench import make_images

from vision_assets.resources import LocalImageStore, UploadPolicy
from vision_assets.settings import Settings
from vision_assets.tools.offline_models import build_offline_models
from vision_assets.wiring import build_definitions, model_resources_from


class Ticks:
    """The upload sensor's ticks as the daemon makes them: each from the cursor the last one left."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance):
        self.defs, self.instance, self.cursor = defs, instance, None

    def registered_run_tags(self) -> dict:
        with dg.build_sensor_context(instance=self.instance, resources=self.defs.resources, definitions=self.defs,
                                     cursor=self.cursor) as context:
            result = self.defs.resolve_sensor_def("upload_sensor")(context)
        for request in result.dynamic_partitions_requests:
            self.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        self.cursor = result.cursor
        [request] = result.run_requests
        return dict(request.tags) | {"dagster/partition": request.partition_key}


def timed_run(defs: dg.Definitions, instance: dg.DagsterInstance, ticks: Ticks) -> tuple[float, dict]:
    """The sensor's tick over what is new in the bucket and its one run: (seconds, the index stage's metadata)."""
    tags = ticks.registered_run_tags()
    started = time.perf_counter()
    result = defs.resolve_job_def("process_images").execute_in_process(instance=instance, tags=tags)
    seconds = time.perf_counter() - started
    assert result.success
    [index] = [e.materialization.metadata for e in result.get_asset_materialization_events()
               if e.asset_key.path[-1] == "qdrant_index"]
    [detections] = [e.materialization.metadata for e in result.get_asset_materialization_events()
                    if e.asset_key.path[-1] == "detections"]
    return seconds, {"model_seconds": index["batch_device_seconds_total"].value,
                     "reused": detections["images_reused"].value, "images": detections["images"].value}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--models", type=Path, help="a folder from `models build-offline --size SIZE` (else built)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vision-reuse-bench-"))
    photos = work / "bucket" / "first"
    photos.mkdir(parents=True)
    models = args.models or work / "models"
    if not (models / "offline.json").exists():
        build_offline_models(models, args.size)
    os.environ |= {"VISION_ASSETS_OFFLINE_MODELS": str(models), "VISION_ASSETS_DATA_DIR": str(work / "data")}
    pictures = make_images(photos, args.images)
    store = LocalImageStore(root=str(work / "bucket"), results_prefix="results/", settle_seconds=0)
    defs = build_definitions(store, model_resources_from(Settings.from_env()), UploadPolicy(batch_size=10_000))
    with dg.instance_for_test() as instance:
        ticks = Ticks(defs, instance)
        first, first_figures = timed_run(defs, instance, ticks)  # first imports and caches: a warm-up
        for n, picture in enumerate(pictures):  # near duplicates, models loaded: the baseline
            buffer = io.BytesIO()
            picture.save(buffer, "JPEG", quality=85)
            (work / "bucket" / "recoded").mkdir(exist_ok=True)
            (work / "bucket" / "recoded" / f"photo_{n:04d}.jpg").write_bytes(buffer.getvalue())
        base, base_figures = timed_run(defs, instance, ticks)
        shutil.copytree(photos, work / "bucket" / "again")
        again, again_figures = timed_run(defs, instance, ticks)
    n = args.images
    print(f"{n} images per run, {args.size} offline models, in each run's process")
    print(f"  first upload                      : {first:6.2f} s  {n / first:6.2f} img/s  model seconds "
          f"{first_figures['model_seconds']:.2f}")
    print(f"  re-encoded copies (baseline)      : {base:6.2f} s  {n / base:6.2f} img/s  model seconds "
          f"{base_figures['model_seconds']:.2f}  reused {base_figures['reused']} of {base_figures['images']}")
    print(f"  the same bytes under other names  : {again:6.2f} s  {n / again:6.2f} img/s  model seconds "
          f"{again_figures['model_seconds']:.2f}  reused {again_figures['reused']} of {again_figures['images']}  "
          f"{base / again:.2f}x the baseline's speed")


if __name__ == "__main__":
    main()
