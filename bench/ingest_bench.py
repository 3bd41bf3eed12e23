"""Where ingest time goes, on Pillow's test images (../shared/corpora) or any folder given as argument.

Three ways to validate the same files, measured in one process:
  1. baseline: `validate_image` + hashing on bytes in memory (no store, no Dagster);
  2. batched: the real `process_images` job over all files as one range run (what the sensor launches);
  3. per image: one run per image (what a sensor without batching would launch), on a sample.
Prints images/s and the ratios against the baseline. Not part of the test suite.

    uv run python bench/ingest_bench.py [FOLDER] [--per-image-sample N]
"""

import argparse
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import dagster as dg

from bench.pipeline_bench import one_image
from vision_assets.bootstrap import bootstrap
from vision_assets.resources import LocalImageStore, UploadPolicy
from vision_assets.vision.images.validation import encode_normalized, validate_image
from vision_assets.vision.records import Rejection
from vision_assets.wiring import build_definitions

bootstrap()  # the process set up as the code location sets up its run workers

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "pillow-test-images"


def baseline(files: list[Path]) -> float:
    payloads = [p.read_bytes() for p in files]
    started = time.perf_counter()
    for data in payloads:
        outcome = validate_image(data)
        if not isinstance(outcome, Rejection):
            encode_normalized(outcome.rgb)
    return time.perf_counter() - started


def pipeline(folder: Path, per_image_sample: int) -> tuple[int, float, float, int]:
    work = Path(tempfile.mkdtemp(prefix="vision-bench-"))
    try:
        shutil.copytree(folder, work / "bucket" / "in")
        store = LocalImageStore(root=str(work / "bucket"), results_prefix="results/", settle_seconds=0,
                                image_extensions=[])
        defs = build_definitions(store, UploadPolicy(batch_size=100_000, max_uploads_per_tick=100_000))
        job = defs.resolve_job_def("process_images")
        with dg.instance_for_test() as instance, dg.build_sensor_context(
            instance=instance, resources=defs.resources, definitions=defs
        ) as context:
            result = defs.resolve_sensor_def("upload_sensor")(context)
            for request in result.dynamic_partitions_requests:
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            keys = list(result.dynamic_partitions_requests[0].partition_keys)
            [request] = result.run_requests
            started = time.perf_counter()
            assert job.execute_in_process(instance=instance, partition_key=request.partition_key).success
            batched = time.perf_counter() - started
            sample = keys[:per_image_sample]
            started = time.perf_counter()
            for key in sample:
                assert job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                              run_config=one_image(key)).success
            per_image = (time.perf_counter() - started) / max(1, len(sample))
        return len(keys), batched, per_image, len(sample)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--per-image-sample", type=int, default=40)
    args = parser.parse_args()
    files = sorted(p for p in args.folder.rglob("*") if p.is_file())
    base = baseline(files)
    count, batched, per_image, sampled = pipeline(args.folder, args.per_image_sample)
    per_image_total = per_image * count
    print(f"{count} files from {args.folder}")
    print(f"  baseline  validate+normalise in memory : {base:7.2f} s  {count / base:8.1f} img/s  1.00x")
    print(f"  batched   one process_images run       : {batched:7.2f} s  {count / batched:8.1f} img/s  "
          f"{batched / base:5.2f}x baseline  ({(batched - base) / count * 1000:.1f} ms/img Dagster+store overhead)")
    print(f"  per image one run per image ({sampled} runs)   : {per_image_total:7.2f} s  {count / per_image_total:8.1f}"
          f" img/s  {per_image_total / base:5.2f}x baseline (extrapolated from {per_image * 1000:.0f} ms/run)")
    print(f"  batching speed-up over one run per image: {per_image_total / batched:.1f}x")


if __name__ == "__main__":
    main()
