"""The model committee: raw model calls vs the batched pipeline vs one run per image, measured in one process.

  1. baseline: the models alone (detector on all images, CLIP on images and crops, the scene tags that gate the
     coral expert, each expert on its crops and gated images), already loaded, no Dagster, no storage;
  2. batched: one `process_images` run over all images (what the upload sensor launches), models loaded in the run;
  3. per image: one run per image, on a sample (what a sensor without batching would launch); plus the fixed cost a
     launched run pays before any of that: a fresh process importing the model libraries.

Models are built offline (random weights, real architectures with --size full). Not part of the test suite.

    uv run python bench/pipeline_bench.py [--images 24] [--size tiny|full] [--models DIR] [--per-image-sample 4]
"""

import argparse
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="bench-ultralytics-"))

import dagster as dg
from PIL import Image, ImageOps

from bench.meter import Meter
from vision_assets.bootstrap import bootstrap
from vision_assets.resources import LocalImageStore, UploadPolicy
from vision_assets.settings import Settings
from vision_assets.tools.offline_models import build_offline_models
from vision_assets.vision.committee.labeling import label_batch
from vision_assets.vision.committee.routing import crop_box
from vision_assets.vision.committee.scenes import scene_tags
from vision_assets.vision.committee.vocabularies import Vocabularies
from vision_assets.vision.committee.zero_shot import Vocabulary
from vision_assets.vision.models.base import Model
from vision_assets.vision.records import DetectionsRecord
from vision_assets.wiring import build_definitions, model_resources_from

bootstrap()  # the process set up as the code location sets up its run workers

# Found, not imported: importing ultralytics sets OMP_NUM_THREADS=1, which would put torch on one core here.
PHOTOS = Path(importlib.util.find_spec("ultralytics").submodule_search_locations[0]) / "assets"


def make_images(folder: Path, count: int) -> list[Image.Image]:
    """Distinct photos: the two ultralytics samples, mirrored, rotated and recoloured."""
    sources = [Image.open(PHOTOS / n).convert("RGB") for n in ("bus.jpg", "zidane.jpg")]
    pictures = []
    for i in range(count):
        picture = sources[i % 2].rotate((i // 2) * 7, expand=False)
        picture = ImageOps.mirror(picture) if i % 3 else picture
        picture.save(folder / f"photo_{i:04d}.jpg", quality=92)
        pictures.append(picture)
    return pictures


def baseline(models: dict, pictures: list[Image.Image]) -> float:
    """The committee's model work as the pipeline does it, without Dagster or storage: the detector, CLIP on the
    images and their crops, the scene tags (the coral gate), the experts on the routed crops and the gated images."""
    detector, clip = models["detector"].detector, models["embedder"].embedder
    labeling = models["labeling"]
    experts = models["specialists"].classifiers()
    detector.detect(pictures[:2]), clip.embed_images(pictures[:2])  # load and warm up outside the timing
    for expert in experts.values():
        expert.classify(pictures[:1])
    scenes = Vocabulary(list(labeling.scenes), clip.prompt_vectors(list(labeling.scenes.values())))  # cached on disk
    # The text vectors of every vocabulary (the detector's classes, each expert's labels: 10,000 species) are made
    # once per model and kept on disk; made here, the run reads them as it would on any day after the first.
    vocabularies = Vocabularies(lambda: models["embedder"].embedder, lambda: models["detector"].detector.class_names,
                                experts)
    vocabularies.detector, vocabularies.experts(set(experts))
    started = time.perf_counter()
    found = detector.detect(pictures)
    keys = [str(i) for i in range(len(pictures))]
    records = {k: DetectionsRecord(partition_key=k, model="m", width=p.width, height=p.height, detections=d)
               for k, p, d in zip(keys, pictures, found)}
    boxes = {k: {i: crop_box(d.box, p.width, p.height, labeling.crop_margin) for i, d in enumerate(records[k].detections)}
             for k, p in zip(keys, pictures)}
    image_vectors = clip.embed_images(pictures)
    clip.embed_images([p.crop(tuple(box)) for k, p in zip(keys, pictures) for box in boxes[k].values()])
    tags = scene_tags(image_vectors, scenes, labeling.scene_tag_threshold, "m")
    coral_scores = {k: t.scores.get(labeling.coral_scene_tag, 0.0) for k, t in zip(keys, tags)}
    label_batch(dict(zip(keys, pictures)), records, boxes, experts, coral_scores, labeling.policy)
    return time.perf_counter() - started


def register_uploads(defs: dg.Definitions, instance: dg.DagsterInstance) -> tuple[list[str], dict[str, str]]:
    """One upload-sensor tick over the bucket, its partitions added as the daemon would: the new images' ids, and
    the tags of the one run the sensor asked for (the bench's batch size takes them all in one batch)."""
    with dg.build_sensor_context(instance=instance, resources=defs.resources, definitions=defs) as context:
        result = defs.resolve_sensor_def("upload_sensor")(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    keys = list(result.dynamic_partitions_requests[0].partition_keys)
    [request] = result.run_requests
    return keys, dict(request.tags) | {"dagster/partition": request.partition_key}


def one_image(image: str) -> dict:
    """The run config that re-runs exactly one image of its batch (what `vision-assets reprocess` launches)."""
    return {"resources": {"image_selection": {"config": {"images": [image]}}}}


def import_cost() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, transformers, open_clip, ultralytics, qdrant_client, dagster"],
                   check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--per-image-sample", type=int, default=4)
    parser.add_argument("--models", type=Path, help="a folder from `models build-offline --size SIZE` (else built)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vision-bench-"))
    (work / "bucket" / "in").mkdir(parents=True)
    models = args.models or work / "models"
    if not (models / "offline.json").exists():
        build_offline_models(models, args.size)
    os.environ |= {"VISION_ASSETS_OFFLINE_MODELS": str(models), "VISION_ASSETS_DATA_DIR": str(work / "data"),
                   "VISION_ASSETS_DEVICE": os.environ.get("VISION_ASSETS_DEVICE", "auto")}
    pictures = make_images(work / "bucket" / "in", args.images)
    settings = Settings.from_env()

    loaded = model_resources_from(settings)
    base = baseline(loaded, pictures)
    device = loaded["detector"].detector.device

    store = LocalImageStore(root=str(work / "bucket"), results_prefix="results/", settle_seconds=0)
    defs = build_definitions(store, model_resources_from(settings), UploadPolicy(batch_size=10_000))
    job = defs.resolve_job_def("process_images")
    with dg.instance_for_test() as instance:
        keys, tags = register_uploads(defs, instance)
        loading = Meter()
        loading.wrap(Model, "load", "model loading")
        with loading.installed():
            started = time.perf_counter()
            assert job.execute_in_process(instance=instance, tags=tags).success
            batched = time.perf_counter() - started
        loads = loading.seconds["model loading"]
        sample = keys[: args.per_image_sample]
        started = time.perf_counter()
        for key in sample:
            assert job.execute_in_process(instance=instance, tags=tags, run_config=one_image(key)).success
        per_run = (time.perf_counter() - started) / len(sample)
    imports = import_cost()
    n = len(keys)
    print(f"{n} images, {args.size} offline models, device {device}")
    print(f"  baseline  models alone, loaded          : {base:7.2f} s  {n / base:7.2f} img/s  1.00x")
    print(f"  batched   one process_images run        : {batched:7.2f} s  {n / batched:7.2f} img/s  "
          f"{base / batched:5.2f}x the baseline's speed")
    print(f"            the same, without model loading: {batched - loads:7.2f} s  {n / (batched - loads):7.2f} img/s  "
          f"{base / (batched - loads):5.2f}x  (loading {loads:.1f} s, once per run)")
    print(f"  per image one run each (in-process)     : {per_run * n:7.2f} s  {1 / per_run:7.2f} img/s  "
          f"{base / (per_run * n):5.2f}x  ({per_run:.2f} s/run, from {len(sample)} runs)")
    print(f"  per image + a launched run's imports    : {(per_run + imports) * n:7.2f} s  "
          f"{1 / (per_run + imports):7.2f} img/s  ({imports:.1f} s to import the model libraries in a new process)")
    print(f"  batching speed-up over one launched run per image: {(per_run + imports) * n / batched:.1f}x")


if __name__ == "__main__":
    main()
