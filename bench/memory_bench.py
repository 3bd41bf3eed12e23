"""Peak memory of one `process_images` run as the batch grows: a run streams each stage's images in chunks
(`VISION_ASSETS_CHUNK_SIZE`), so its peak should follow the chunk, not the batch.

Each measurement is a fresh process (peak RSS is per process): it generates N photos of about 12 MP (or
`--megapixels`), registers them, runs the batched job in process with the offline models and reports its peak RSS. The baseline is the
smallest batch, measured in the same invocation; the ratio is what bench/README.md quotes. Not part of the test suite.

    uv run python bench/memory_bench.py [--batches 16,256] [--size full|tiny] [--chunk 32] [--megapixels 50]
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_photos(folder: Path, count: int, megapixels: float = 12, distinct: int = 8) -> None:
    """`count` JPEGs of about `megapixels` (4:3) from the ultralytics sample photos: scaled up, rotated, mirrored,
    with grain. `distinct` of them are made (a 50 MP one takes seconds to encode); the rest are copies with a
    different comment, so every file has its own bytes."""
    import numpy as np
    import ultralytics
    from PIL import Image, ImageOps

    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    size = (width, width * 3 // 4)
    photos = Path(ultralytics.__file__).parent / "assets"
    sources = [Image.open(photos / n).convert("RGB").resize(size) for n in ("bus.jpg", "zidane.jpg")]
    grain = np.random.default_rng(0).integers(-12, 12, (size[1], size[0], 3), dtype=np.int16)
    made = []
    for i in range(min(count, distinct)):
        picture = sources[i % 2].rotate((i // 2) % 30, expand=False)
        picture = ImageOps.mirror(picture) if i % 3 else picture
        noisy = np.clip(np.asarray(picture, dtype=np.int16) + np.roll(grain, i * 97, axis=1), 0, 255).astype(np.uint8)
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        made.append(path.read_bytes())
    for i in range(len(made), count):  # a JPEG comment segment after SOI: same pixels, other bytes
        data = made[i % len(made)]
        comment = f"copy {i}".encode()
        (folder / f"photo_{i:04d}.jpg").write_bytes(data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big")
                                                    + comment + data[2:])


def measure(work: Path, models: Path, chunk: int) -> dict:
    """In a child process: one batched run over the photos in `work`/bucket; its wall time and peak RSS."""
    warnings.filterwarnings("ignore")
    os.environ |= {"VISION_ASSETS_OFFLINE_MODELS": str(models), "VISION_ASSETS_DATA_DIR": str(work / "data"),
                   "VISION_ASSETS_CHUNK_SIZE": str(chunk), "YOLO_CONFIG_DIR": str(work / "ultralytics")}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    import dagster as dg

    from bench.pipeline_bench import register_uploads
    from vision_assets.bootstrap import bootstrap
    from vision_assets.resources import LocalImageStore, StagePolicy, UploadPolicy
    from vision_assets.settings import Settings
    from vision_assets.wiring import build_definitions, model_resources_from

    bootstrap()  # the process set up as the code location sets up its run workers

    settings = Settings.from_env()
    store = LocalImageStore(root=str(work / "bucket"), results_prefix="results/", settle_seconds=0)
    defs = build_definitions(store, model_resources_from(settings), UploadPolicy(batch_size=10_000),
                             stage_policy=StagePolicy(chunk_size=settings.chunk_size))
    with dg.instance_for_test() as instance:
        keys, tags = register_uploads(defs, instance)
        sampler = RssSampler()
        started = time.perf_counter()
        run = defs.resolve_job_def("process_images").execute_in_process(
            instance=instance, tags=tags)
        seconds = time.perf_counter() - started
        sampler.stop()
        steps = sampler.peaks_by_step(instance.all_logs(run.run_id, of_type={
            dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}))
    assert run.success
    return {"batch": len(keys), "seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "before_run_mib": before / 1024, "steps": steps}


class RssSampler:
    """This process's resident memory every 50 ms, on a thread, so each step's peak can be read afterwards."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while self.running:
            with open("/proc/self/statm") as statm:
                self.samples.append((time.time(), int(statm.read().split()[1]) * page / 2**20))
            time.sleep(0.05)

    def stop(self) -> None:
        self.running = False
        self.thread.join()

    def peaks_by_step(self, events) -> dict[str, float]:
        started, peaks = {}, {}
        for event in events:
            if event.dagster_event.event_type_value == "STEP_START":
                started[event.step_key] = event.timestamp
            elif event.step_key in started:
                window = [rss for when, rss in self.samples if started[event.step_key] <= when <= event.timestamp]
                peaks[event.step_key] = max(window, default=0.0)
        return peaks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="16,256")
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--models", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.models, args.chunk)))
        return
    from vision_assets.tools.offline_models import build_offline_models

    models = Path(tempfile.mkdtemp(prefix="memory-bench-models-"))
    build_offline_models(models, args.size)
    figures = []
    for batch in map(int, args.batches.split(",")):
        work = Path(tempfile.mkdtemp(prefix=f"memory-bench-{batch}-"))
        (work / "bucket" / "in").mkdir(parents=True)
        make_photos(work / "bucket" / "in", batch, args.megapixels)  # here, so the child's peak is the run's alone
        child = subprocess.run([sys.executable, __file__, "--child", str(work), "--models", str(models),
                                "--chunk", str(args.chunk)], capture_output=True, text=True)
        shutil.rmtree(work)
        if child.returncode:
            sys.exit(f"batch {batch} failed:\n{child.stderr[-3000:]}")
        figures.append(json.loads(child.stdout.strip().splitlines()[-1]))
    shutil.rmtree(models)
    base = figures[0]
    print(f"peak RSS of one batched run, ~{args.megapixels:g} MP photos, {args.size} offline models, chunks of "
          f"{args.chunk}")
    for f in figures:
        print(f"  batch {f['batch']:4d}: peak {f['peak_mib']:7.0f} MiB  ({f['peak_mib'] / base['peak_mib']:.2f}x batch "
              f"{base['batch']})  {f['seconds']:7.1f} s  {f['batch'] / f['seconds']:.2f} img/s   by step (MiB): "
              + ", ".join(f"{step} {peak:.0f}" for step, peak in f["steps"].items()))


if __name__ == "__main__":
    main()
