"""What the review pictures cost: the same batched `process_images` run with pictures on and off, on a fresh
instance each, measured as the bytes of events the run stores (what the event log grows by) and the run's time.

The batch is photos plus a few truncated JPEGs (their previews are pictures too). Tiny offline models: the models'
cost is not what is measured here. Not part of the test suite.

    uv run python bench/review_bench.py [--images 48] [--truncated 4]
"""

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
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="bench-ultralytics-"))

import dagster as dg
from dagster._serdes import serialize_value

from bench.pipeline_bench import PHOTOS, make_images, register_uploads
from vision_assets.bootstrap import bootstrap
from vision_assets.resources import LocalImageStore, ReviewSettings, UploadPolicy
from vision_assets.settings import Settings
from vision_assets.tools.offline_models import build_offline_models
from vision_assets.vision.images.review import ReviewPictures, labels_markdown, review_crops_markdown
from vision_assets.vision.records import LabelsRecord
from vision_assets.vision.storage.results_store import LABELS
from vision_assets.wiring import build_definitions, model_resources_from

bootstrap()  # the process set up as the code location sets up its run workers


def measure(work: Path, pictures: bool) -> tuple[list[str], int, float, LocalImageStore]:
    """(the images, bytes of stored events, seconds, the store) for one batched run over the bucket."""
    # Uploads under in/, each measurement's results beside them (never registered as uploads by the next one).
    store = LocalImageStore(root=str(work / "bucket"), prefix="in/", results_prefix=f"results-{pictures}/",
                            settle_seconds=0)
    review = ReviewSettings(pictures=pictures)
    defs = build_definitions(store, model_resources_from(Settings.from_env()), UploadPolicy(batch_size=10_000),
                             review=review)
    with dg.instance_for_test() as instance:
        keys, tags = register_uploads(defs, instance)
        started = time.perf_counter()
        result = defs.resolve_job_def("process_images").execute_in_process(
            instance=instance, tags=tags
        )
        seconds = time.perf_counter() - started
        assert result.success
        stored = sum(len(serialize_value(entry)) for entry in instance.all_logs(result.run_id))
    return keys, stored, seconds, store


def picture_seconds(store: LocalImageStore, keys: list[str]) -> tuple[int, float]:
    """Making the pictures alone, from the stored results: (pictures, seconds)."""
    results, look = store.results, ReviewPictures()
    labelled = [(key, results.read(key, LABELS, LabelsRecord)) for key in keys]
    labelled = [(key, labels, results.read_normalized(key)) for key, labels in labelled if labels]
    started = time.perf_counter()
    for key, labels, picture in labelled:
        labels_markdown(key, picture, labels, look)
        if labels.needing_review:
            review_crops_markdown(picture, labels, look)
    return len(labelled), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--truncated", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vision-review-bench-"))
    (work / "bucket" / "in").mkdir(parents=True)
    build_offline_models(work / "models", "tiny")
    os.environ |= {"VISION_ASSETS_OFFLINE_MODELS": str(work / "models"), "VISION_ASSETS_DATA_DIR": str(work / "data")}
    make_images(work / "bucket" / "in", args.images)
    broken = (PHOTOS / "bus.jpg").read_bytes()
    for i in range(args.truncated):
        (work / "bucket" / "in" / f"truncated_{i}.jpg").write_bytes(broken[: len(broken) // (2 + i)])

    measure(work, pictures=False)  # warm-up: imports, model loads, file caches
    keys, without, seconds_without, _ = measure(work, pictures=False)
    _, with_pictures, seconds_with, store = measure(work, pictures=True)
    drawn, drawing = picture_seconds(store, keys)
    n = len(keys)
    extra = (with_pictures - without) / n
    print(f"{n} images ({args.truncated} truncated), tiny offline models, one batched run each way")
    print(f"  event log, pictures off : {without / n / 1024:7.1f} KB/image  {without / n * 1000 / 2**20:7.1f} MB per 1,000")
    print(f"  event log, pictures on  : {with_pictures / n / 1024:7.1f} KB/image  "
          f"{with_pictures / n * 1000 / 2**20:7.1f} MB per 1,000  ({with_pictures / without:.2f}x)")
    print(f"  the pictures add        : {extra / 1024:7.1f} KB/image  {extra * 1000 / 2**20:7.1f} MB per 1,000 images")
    print(f"  run time                : {seconds_without / n * 1000:7.1f} ms/image off, "
          f"{seconds_with / n * 1000:7.1f} ms/image on ({(seconds_with - seconds_without) / n * 1000:+.1f} ms)")
    print(f"  making the pictures     : {drawing / drawn * 1000:7.1f} ms/image (thumbnail, boxes, crops to review, "
          f"JPEG, base64; {drawn} images)")


if __name__ == "__main__":
    main()
