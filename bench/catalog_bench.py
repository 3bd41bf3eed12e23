"""What one refresh of the catalogue costs as the catalogue grows: `image_catalog` is now refreshed without a person
after batches' results change (the `catalog_refresh` sensor), so its cost recurs.

For each size N: N images' records (source record, labels, index) as the pipeline leaves them, in a local folder
store; then `build_catalog` (what the asset runs): the first build (every record read); a refresh by listing with
nothing changed and after one batch of 256 images was processed again (one listing of the results prefix, the rows
whose etags did not change reused: what the periodic full refresh costs); and the same batch's refresh following
the feed (only its images read, the asset's usual refresh). The catalogue's Parquet write and read are timed too.
Folder store: an S3 listing adds a request per 1,000 keys on top.

    uv run python bench/catalog_bench.py [--catalog 10000,100000]
"""

import argparse
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vision_assets.vision.catalog import build_catalog, from_parquet, to_parquet
from vision_assets.vision.records import (
    CropLabels,
    Detection,
    ImageFacts,
    IndexRecord,
    LabelsRecord,
    SourceImageRecord,
)
from vision_assets.vision.storage.object_store import FolderObjectStore
from vision_assets.vision.storage.overlap import each_image
from vision_assets.vision.storage.results_store import INDEX, LABELS, ResultsStore

BATCH = 256


def image_id(n: int) -> str:
    return f"catalog/{n // 1000:04d}/{n:07d}.jpg"


def write_image(results: ResultsStore, n: int) -> None:
    key = image_id(n)
    results.write_source_record(SourceImageRecord(
        partition_key=key, batch=f"b{n // BATCH:05d}", object_key=key, source_uri=f"file:///bench/{key}", size_bytes=
        250_000, sha256=f"{n:064x}", status="valid", processed_at=datetime.now(UTC), seconds=0.05,
        facts=ImageFacts(format="JPEG", width=4000, height=3000, original_mode="RGB", phash=f"{random.Random(n).getrandbits(64):016x}")))
    detection = Detection(box=[10.0, 10.0, 200.0, 300.0], class_id=16, class_name="dog", confidence=0.8)
    results.write(key, LABELS, LabelsRecord(partition_key=key, crops=[
        CropLabels(detection_index=0, detection=detection, crop_box=[0, 0, 220, 320])]))
    results.write(key, INDEX, IndexRecord(partition_key=key, image_point=f"i{n}", crop_points=[f"c{n}"]))


def timed(call):
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", default="10000,100000", help="catalogue sizes, comma-separated")
    args = parser.parse_args()
    for size in (int(part) for part in args.catalog.split(",")):
        work = Path(tempfile.mkdtemp(prefix="catalog-bench-"))
        try:
            results = ResultsStore(FolderObjectStore(work / "bucket"), "vision-assets-results/")
            seeded, _ = timed(lambda: each_image(lambda n: write_image(results, n), list(range(size)), 16))
            keys = [image_id(n) for n in range(size)]
            first, (frame, _) = timed(lambda: build_catalog(results, keys, None))
            written, data = timed(lambda: to_parquet(frame))
            read, previous = timed(lambda: from_parquet(data))
            unchanged, (_, counts) = timed(lambda: build_catalog(results, keys, previous))
            assert counts["read"] == 0, counts
            each_image(lambda n: write_image(results, n), list(range(BATCH)), 16)  # one batch processed again
            one_batch, (_, counts) = timed(lambda: build_catalog(results, keys, previous))
            assert counts["read"] == BATCH, counts
            batch = {image_id(n) for n in range(BATCH)}
            fed, (_, counts) = timed(lambda: build_catalog(results, keys, previous, changed=batch))
            assert counts["read"] == BATCH, counts
            print(f"{size:>9,} images (seeded in {seeded:.0f} s): first build {first:6.1f} s | listing refresh, "
                  f"nothing changed {unchanged:6.1f} s, after one batch of {BATCH} {one_batch:6.1f} s | feed refresh "
                  f"after that batch {fed:5.2f} s | Parquet {len(data) / 1e6:.1f} MB, write {written:.2f} s, read "
                  f"{read:.2f} s", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
