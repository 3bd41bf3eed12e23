"""Three costs outside the models that this project sets for every run, each against what it replaced, and one idea
measured but not built, all in one process on the same inputs (CPU time, one thread):

  1. Pillow's block cache (`vision/process.py`, `PILLOW_BLOCKS_MAX`): a 12 MP JPEG decoded in full, at 1/2, and an
     EXIF-turned photo ingested (a full decode, the turn, the working copy's encode), keeping no freed blocks (Pillow's
     default, the baseline) against keeping 16. Reports CPU, the kernel's share and page faults per photo.
  2. The folder store's keys (`FolderObjectStore._path`): each key resolved whole (the baseline, what the store did)
     against its folder resolved once and the file checked for a symlink, over the keys a run asks for.
  3. The SQLite event log's connections: Dagster's (a SQLAlchemy engine built per connection, the baseline) against
     this project's (an engine kept per database file), on the same database.
  4. An idea measured, not built: ingest keeping its decode on local disk for the embeddings stage (decoded at 1/2
     instead of 1/4, written raw, read back) against the embeddings stage decoding the photo again at 1/2.

    uv run python bench/run_overhead_bench.py [--photos 6]
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from PIL import Image

from bench.memory_bench import make_photos
from vision_assets.vision.images.validation import (
    EXIF_ORIENTATION_TAG,
    ValidationLimits,
    encode_normalized,
    validate_image,
    working_copy,
)
from vision_assets.vision.images.working import decode_working
from vision_assets.vision.process import PILLOW_BLOCKS_KEPT
from vision_assets.vision.storage.object_store import FolderObjectStore


def per_call(call, inputs: list, repeat: int = 2) -> tuple[float, float, float]:
    """CPU ms, kernel ms and page faults per call, after one warm-up pass."""
    for item in inputs:
        call(item)
    before, cpu = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    for _ in range(repeat):
        for item in inputs:
            call(item)
    after, n = resource.getrusage(resource.RUSAGE_SELF), repeat * len(inputs)
    return (1000 * (time.process_time() - cpu) / n, 1000 * (after.ru_stime - before.ru_stime) / n,
            (after.ru_minflt - before.ru_minflt) / n)


ROUNDS = 5


def median_round(rounds: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The round with the median CPU time (its kernel time and faults with it)."""
    return sorted(rounds)[len(rounds) // 2]


def turned(data: bytes) -> bytes:
    """The same photo with EXIF orientation 6 (a phone held upright): it cannot serve as its own working copy."""
    image = Image.open(io.BytesIO(data))
    exif = image.getexif()
    exif[EXIF_ORIENTATION_TAG] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def ingest(data: bytes) -> None:
    valid = validate_image(data, ValidationLimits(), 4096, 640)
    if not valid.original_serves:
        encode_normalized(working_copy(valid.rgb, 4096))


def block_cache(photos: list[bytes]) -> None:
    print(f"1. Pillow's block cache, {len(photos)} photos of 12 MP (CPU ms / kernel ms / page faults per photo, the "
          f"median of {ROUNDS} alternating rounds):")
    rotated = [turned(data) for data in photos]
    cases = [("decoded in full", lambda d: decode_working(d, 1.0), photos),
             ("decoded at 1/2", lambda d: decode_working(d, 0.5), photos),
             ("ingested, EXIF-turned", ingest, rotated)]
    for label, call, inputs in cases:
        rounds: dict[int, list[tuple[float, float, float]]] = {0: [], PILLOW_BLOCKS_KEPT: []}
        for _ in range(ROUNDS):  # the two settings alternate, so that the machine's drift falls on both alike
            for kept in rounds:
                Image.core.set_blocks_max(kept)
                rounds[kept].append(per_call(call, inputs, repeat=1))
        (cpu0, sys0, flt0), (cpu1, sys1, flt1) = (median_round(rounds[0]), median_round(rounds[PILLOW_BLOCKS_KEPT]))
        print(f"   {label:24s} none kept {cpu0:6.1f} / {sys0:5.1f} / {flt0:6.0f}   {PILLOW_BLOCKS_KEPT} kept "
              f"{cpu1:6.1f} / {sys1:5.1f} / {flt1:6.0f}   {cpu0 / cpu1:.2f}x")
    Image.core.set_blocks_max(0)


def folder_keys(work: Path) -> None:
    store = FolderObjectStore(work / "bucket")
    names = ["source.json", "detections.json", "embeddings.json", "embeddings.npz", "labels.json", "review.json",
             "model-input.jpg", "normalized.jpg"]
    keys = [f"vision-assets-results/batch-{i // 256:04d}/photo_{i:05d}.jpg/~{name}"
            for i in range(512) for name in names]
    for key in keys[:64]:
        store.put(key, b"{}")

    def whole(key: str) -> Path:  # what the store did before: every key resolved whole
        path = (store.root / key).resolve()
        if path != store.root and store.root not in path.parents:
            raise ValueError(key)
        return path

    before = per_call(whole, keys, repeat=1)[0]
    after = per_call(store._path, keys, repeat=1)[0]  # noqa: SLF001 - the method measured
    print(f"2. the folder store's keys ({len(keys):,} keys of a run's records): resolved whole {1000 * before:.1f} "
          f"us a key, folder resolved once {1000 * after:.1f} us ({before / after:.1f}x); a run asks ~40 per photo")


def event_log_connections(work: Path, connections: int = 500) -> None:
    import sqlalchemy as db
    from dagster._core.storage.event_log import SqliteEventLogStorage  # the baseline: Dagster's own

    from vision_assets.event_storage.sqlite import BatchingSqliteEventLogStorage

    theirs = SqliteEventLogStorage(str(work / "events"))
    ours = BatchingSqliteEventLogStorage(str(work / "events"))

    def read(storage) -> None:
        with storage.index_connection() as connection:
            connection.execute(db.text("select 1"))

    dagster_ms = per_call(lambda _: read(theirs), list(range(connections)), repeat=1)[0]
    ours_ms = per_call(lambda _: read(ours), list(range(connections)), repeat=1)[0]
    print(f"3. the SQLite event log: a connection {dagster_ms:.2f} ms of CPU with Dagster's engine per connection, "
          f"{ours_ms:.2f} ms with the engine kept ({dagster_ms / ours_ms:.1f}x); a process_images run opens ~500")
    theirs.dispose()
    ours.dispose()


def pixel_cache(photos: list[bytes], work: Path) -> None:
    """Each photo's file written once and read back once, as a run would (a file per photo, deleted when read)."""
    from vision_assets.vision.models.inputs import fit_within

    def ingest_at(side: int):
        return lambda data: fit_within(validate_image(data, ValidationLimits(), 4096, side).rgb, 640)

    at_quarter = per_call(ingest_at(640), photos)[0]
    at_half = per_call(ingest_at(2000), photos)[0]
    half = validate_image(photos[0], ValidationLimits(), 4096, 2000).rgb
    cache = work / "pixels"
    cache.mkdir()
    names = iter(range(1_000_000))
    written: list[Path] = []

    def write(_) -> None:
        path = cache / f"{next(names)}.rgb"
        path.write_bytes(half.tobytes())
        written.append(path)

    def read(_) -> None:
        path = written.pop(0)
        Image.frombuffer("RGB", half.size, path.read_bytes(), "raw", "RGB", 0, 1).load()
        path.unlink()

    write_ms = per_call(write, photos, repeat=3)[0]
    read_ms = per_call(read, photos, repeat=3)[0]
    decoded = per_call(lambda data: decode_working(data, 0.5), photos)[0]
    cost = at_half - at_quarter + write_ms + read_ms
    print(f"4. a pixel cache between ingest and embeddings: ingest decoding at 1/2 +{at_half - at_quarter:.1f} ms, "
          f"writing its {half.width}x{half.height} pixels {write_ms:.1f} ms, reading and deleting them "
          f"{read_ms:.1f} ms: "
          f"{cost:.1f} ms of this process's CPU against {decoded:.1f} ms for the embeddings stage's decode at 1/2 "
          f"({decoded - cost:+.1f} ms per photo), and {256 * len(half.tobytes()) / 1e9:.1f} GB written to local disk "
          f"per batch of 256 (its writeback is the kernel's CPU, outside this figure)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=6)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="run-overhead-bench-"))
    (work / "photos").mkdir()
    make_photos(work / "photos", args.photos, 12)
    photos = [path.read_bytes() for path in sorted((work / "photos").glob("*.jpg"))]
    block_cache(photos)
    folder_keys(work)
    event_log_connections(work)
    pixel_cache(photos, work)


if __name__ == "__main__":
    main()
