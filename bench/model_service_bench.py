"""Feeding the models: 12 MP photos through the pipeline as Dagster runs them, against the same models alone.

  1. baseline: the committee's models alone, loaded in this process, on the same device, over the same photos: each
     photo decoded once in full, the detector, CLIP on the photo and its crops, each expert on the crops routed to it.
  2. pipeline: a model service (`vision-assets models serve`, one worker per device), the upload sensor registering
     the photos in batches, and each batch's `process_images` run launched as Dagster's default run launcher does, a
     process of its own (`dagster job execute`), two in flight. Runs ask the service for every model answer.

Reported: end-to-end images/s of each and their ratio; non-model CPU per image (the run processes' CPU, which holds
no model work, plus the service's CPU outside its model calls); each run's fixed cost from launch to the start of its
first model stage, against what a run paid before (a fresh process importing the model libraries and loading the
models). Both sides run torch on one thread, in the thread that calls the model, so CPU outside the models is CPU
time minus the calling threads' CPU time in model calls (not their wall time: the stages' read-ahead and write
threads keep decoding and writing while a model computes, and that CPU is outside the models).

    uv run python bench/model_service_bench.py [--photos 32] [--batch 8] [--in-flight 2] [--size tiny|full]
        [--run-photos 16,256]
"""

import argparse
import json
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
os.environ["OMP_NUM_THREADS"] = "1"  # one torch thread everywhere: model CPU time equals model wall time


from bench.memory_bench import make_photos
from bench.model_service import free_port, group_cpu_seconds, model_seconds, model_service
from vision_assets.cli import instance_yaml, prepare_runs


def baseline(photos: list[Path], env: dict[str, str]) -> dict:
    """In a child process (its own imports and loads): the models alone over the photos."""
    script = f"""
import json, os, sys, time
sys.path.insert(0, {str(ROOT)!r})
os.environ.update({json.dumps(env)})
started = time.process_time()
from PIL import Image
from vision_assets.settings import Settings
from vision_assets.resources.models import committee_resources
from vision_assets.vision.committee.routing import DEFAULT_ROUTES, crop_box
models = committee_resources(Settings.from_env())
detector, clip = models["detector"].detector, models["embedder"].embedder
experts = models["specialists"].classifiers()
picture = Image.new("RGB", (640, 480))
detector.detect([picture]); clip.embed_images([picture])
[expert.classify([picture]) for expert in experts.values()]
fixed = time.process_time() - started
inside = 0.0
def timed(call, *args):
    global inside
    began = time.thread_time(); out = call(*args); inside += time.thread_time() - began
    return out
wall, cpu = time.perf_counter(), time.process_time()
for path in {[str(p) for p in photos]!r}:
    image = Image.open(path).convert("RGB")
    [found] = timed(detector.detect, [image])
    crops = [image.crop(tuple(crop_box(d.box, image.width, image.height, 0.1))) for d in found]
    timed(clip.embed_images, [image] + crops)
    for name, expert in experts.items():
        mine = [c for c, d in zip(crops, found) if DEFAULT_ROUTES.get(d.class_name) == name]
        if mine:
            timed(expert.classify, mine)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({{"wall": wall, "cpu": cpu, "inside": inside, "fixed_cpu": fixed}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=3600)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


# The upload sensor's tick as the daemon runs it, for a child process's script: the batches added to the instance.
SENSOR_TICK = """def tick():
    instance = dg.DagsterInstance.get()
    sensor = defs.resolve_sensor_def("upload_sensor")
    with dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources,
                                 instance_ref=instance.get_ref()) as context:
        result = sensor.evaluate_tick(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return instance, result
"""


DEFAULT_INSTANCE = "telemetry:\n  enabled: false\n"  # Dagster's default storage and no pools


def write_instance(home: Path, dev: bool, runs: int) -> None:
    """`home`'s dagster.yaml: the instance `vision-assets dev` makes (its event log is vision_assets/event_storage, its
    pools limited) for up to `runs` runs in flight, or Dagster's default one."""
    (home / "dagster.yaml").write_text(instance_yaml(home, max_runs=runs, run_retries=0) if dev else DEFAULT_INSTANCE)


def in_process_run(warm: list[Path], photos: list[Path], env: dict[str, str], work: Path,
                   name: str = "in-process", service: tuple[int, str] | None = None, dev_instance: bool = True) -> dict:
    """A `process_images` run over `photos` in a process that has already run one over `warm` (so the imports and
    every first-time cost of a run process are paid): its CPU outside the models (process CPU time minus the time
    inside the models' calls and loads, none where the env names a model service), as issue #38 measured the
    pipeline before (583 ms per 12 MP photo). With `service` (its process group, its URL): also the service's CPU
    outside its model calls during the measured run."""
    data, home = work / name, work / f"{name}-home"
    (data / "bucket").mkdir(parents=True)
    home.mkdir()
    write_instance(home, dev_instance, runs=2)
    child_env = env | {"VISION_ASSETS_DATA_DIR": str(data), "DAGSTER_HOME": str(home),
                       "VISION_ASSETS_BATCH_SIZE": str(max(len(warm), len(photos)))}
    script = f"""
import json, os, sys, time
sys.path.insert(0, {str(ROOT)!r})
os.environ.update({json.dumps(child_env)})
import dagster as dg
from vision_assets.definitions import defs
from vision_assets.vision.models import base, classifier, detector, embedder, taxonomy
inside = 0.0
def timed(owner, name):
    original = getattr(owner, name)
    def call(*args, **kwargs):
        global inside
        began = time.thread_time()  # this thread's CPU: the stages' other threads go on decoding meanwhile
        try:
            return original(*args, **kwargs)
        finally:
            inside += time.thread_time() - began
    setattr(owner, name, call)
for owner, name in [(detector.YoloDetector, "detect"), (embedder.ClipEmbedder, "embed_images"),
                    (embedder.ClipEmbedder, "embed_texts"), (classifier.ImageClassifier, "classify"),
                    (taxonomy.TaxonClassifier, "classify"), (base.Model, "load")]:
    timed(owner, name)
{SENSOR_TICK}
def one_run(paths):
    for path in paths:
        os.link(path, os.path.join({str(data / "bucket")!r}, os.path.basename(path)))
    instance, result = tick()
    [request] = [r for r in result.run_requests if r.partition_key]
    cpu = time.process_time()  # the run's, not the sensor tick's that registered its photos
    run = defs.resolve_job_def("process_images").execute_in_process(
        instance=instance, partition_key=request.partition_key, tags=request.tags)
    assert run.success
    return time.process_time() - cpu
def service_outside():
    if not {service!r}:
        return 0.0
    from bench.model_service import group_cpu_seconds, model_seconds
    group, url = {service!r}
    return group_cpu_seconds(group) - model_seconds(url)
one_run({[str(p) for p in warm]!r})
inside, service_before = 0.0, service_outside()
cpu = one_run({[str(p) for p in photos]!r})
print(json.dumps({{"cpu": cpu, "inside": inside, "service": service_outside() - service_before}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=3600)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def register_batches(env: dict[str, str]) -> list[dict[str, str]]:
    """The upload sensor's tick, as the daemon runs it: the batches added, their runs' tags returned."""
    script = f"""
import json, os, sys
sys.path.insert(0, {str(ROOT)!r})
os.environ.update({json.dumps(env)})
import dagster as dg
from vision_assets.definitions import defs
{SENSOR_TICK}
_, result = tick()
print(json.dumps([dict(r.tags) | {{"dagster/partition": r.partition_key}} for r in result.run_requests or []
                  if r.partition_key]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def first_model_stage_delays(home: Path, launched: dict[str, float]) -> list[tuple[float, float]]:
    """Per run: (seconds from its launch to the start of its `detections` step, the seconds of its `source_images`
    step within them): the first is the process start, imports, resources and the ingest of the batch's photos; the
    difference is what a run pays before its first model stage whatever its size."""
    import dagster as dg

    delays = []
    os.environ["DAGSTER_HOME"] = str(home)
    with dg.DagsterInstance.get() as instance:
        failed = [r.dagster_run.run_id for r in instance.get_run_records()
                  if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS]
        if failed:
            raise SystemExit(f"{len(failed)} run(s) did not succeed: {failed}")
        for run in instance.get_run_records():
            records = instance.get_records_for_run(
                run.dagster_run.run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}).records
            at = {(r.event_log_entry.step_key, r.event_log_entry.dagster_event_type): r.event_log_entry.timestamp
                  for r in records}
            start, success = dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS
            tag = run.dagster_run.tags.get("dagster/partition")
            if ("detections", start) in at and tag in launched:
                ingest = at.get(("source_images", success), 0.0) - at.get(("source_images", start), 0.0)
                delays.append((at[("detections", start)] - launched[tag], ingest))
    return delays


def pipeline(work: Path, photos: list[Path], env: dict[str, str], in_flight: int,
             single_runs: dict[int, tuple[list[Path], list[Path]]], dev_instance: bool = True) -> dict:
    """The sensor batches of `photos` launched as Dagster launches them; before them, each single run of
    `single_runs` (its size: warm-up photos, measured photos) through the service."""
    devices = {"VISION_ASSETS_MODEL_DEVICES": os.environ.get("BENCH_DEVICES", "auto")}
    with model_service(env | devices, work) as (service, url):
        # Warm: every model loaded once, as a service that has been up a while holds them (loads are not per run).
        from vision_assets.vision.models.remote import ModelServiceClient
        from vision_assets.vision.models.wire import ModelRef

        client = ModelServiceClient(url)
        for ref in client.held()["held"].values():
            client.ask("describe", ModelRef(**ref))
        run_env = env | {"VISION_ASSETS_MODEL_SERVICE_URL": url}
        # Single runs through the service, each in a process that ran one before: the per-image CPU outside the
        # models, in the run and in the service.
        single = {size: in_process_run(warm, measured, run_env, work, f"through-service-{size}", (service.pid, url),
                                       dev_instance) for size, (warm, measured) in single_runs.items()}
        bucket = Path(run_env["VISION_ASSETS_DATA_DIR"]) / "bucket"
        bucket.mkdir(parents=True, exist_ok=True)
        for photo in photos:
            os.link(photo, bucket / photo.name)
        tags = register_batches(run_env)
        service_cpu, service_model = group_cpu_seconds(service.pid), model_seconds(url)
        children_before = os.times()
        started, launched, running, waiting = time.perf_counter(), {}, [], list(tags)
        while waiting or running:
            running = [r for r in running if r.poll() is None]
            while waiting and len(running) < in_flight:
                run_tags = waiting.pop(0)
                launched[run_tags["dagster/partition"]] = time.time()
                running.append(subprocess.Popen(
                    [sys.executable, "-m", "dagster", "job", "execute", "-m", "vision_assets.definitions", "-j",
                     "process_images", "--tags", json.dumps(run_tags)], env=os.environ | run_env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.05)
        wall = time.perf_counter() - started
        children = os.times()
        run_cpu = (children.children_user - children_before.children_user
                   + children.children_system - children_before.children_system)
        service_cpu = group_cpu_seconds(service.pid) - service_cpu
        service_model = model_seconds(url) - service_model
        delays = first_model_stage_delays(Path(run_env["DAGSTER_HOME"]), launched)
        return {"wall": wall, "runs": len(tags), "run_cpu": run_cpu, "service_cpu": service_cpu,
                "service_model": service_model, "delays": delays, "single": single}


def fresh_run_cost(env: dict[str, str]) -> float:
    """What a run paid before the service: a fresh process importing the model libraries and loading the models."""
    script = f"""
import json, os, sys, time
sys.path.insert(0, {str(ROOT)!r})
os.environ.update({json.dumps(env)})
started = time.perf_counter()
import torch, transformers, open_clip, ultralytics
from PIL import Image
from vision_assets.settings import Settings
from vision_assets.resources.models import committee_resources
models = committee_resources(Settings.from_env())
picture = Image.new("RGB", (640, 480))
models["detector"].detector.detect([picture]); models["embedder"].embedder.embed_images([picture])
print(time.perf_counter() - started)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    return float(result.stdout.strip().splitlines()[-1])


def code_location_start_cpu(env: dict[str, str]) -> float:
    """The CPU a run process spends importing the code location, before any image: each run's fixed start-up."""
    before = os.times()
    subprocess.run([sys.executable, "-c", "import vision_assets.definitions"], env=os.environ | env, check=True,
                   capture_output=True, timeout=300)
    after = os.times()
    return after.children_user - before.children_user + after.children_system - before.children_system


def working_copy_cost(photos: list[Path]) -> dict[str, tuple[float, float]]:
    """Per store (a folder; S3 through moto's server on loopback): the CPU of writing a photo's bytes as its working
    copy against copying the upload within the store (what ingest does where the upload serves as its own working
    copy), in the calling thread, per photo."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    from vision_assets.vision.storage.object_store import FolderObjectStore, S3ObjectStore

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")
        client.create_bucket(Bucket="bench")
        costs = {}
        for name, store in (("folder", FolderObjectStore(tempfile.mkdtemp(prefix="copy-bench-"))),
                            ("S3", S3ObjectStore(client, "bench"))):
            uploads = []
            for photo in photos:
                store.put(f"in/{photo.name}", photo.read_bytes())
                uploads.append(store.get(f"in/{photo.name}"))
            started = time.thread_time()
            for version, data in uploads:
                store.put(f"results/{version.key}/written.jpg", data, "image/jpeg")
            written = (time.thread_time() - started) / len(uploads)
            started = time.thread_time()
            for version, _ in uploads:
                assert store.copy_if_unchanged(version, f"results/{version.key}/copied.jpg", "image/jpeg")
            costs[name] = (written, (time.thread_time() - started) / len(uploads))
        return costs
    finally:
        server.stop()


def print_fixed_and_per_photo(how: str, cpu_by_size: dict[int, float]) -> None:
    """A run's non-model CPU as a fixed part and a part per photo, from its smallest and largest single runs (CPU =
    fixed + photos x per photo): what a batch size changes, and what only fewer passes over each photo can."""
    if len(cpu_by_size) < 2:
        return
    small, large = min(cpu_by_size), max(cpu_by_size)
    per_photo = (cpu_by_size[large] - cpu_by_size[small]) / (large - small)
    fixed = cpu_by_size[small] - small * per_photo
    print(f"  a run's non-model CPU, {how}: {fixed:.2f} s fixed + {1000 * per_photo:.0f} ms per photo "
          f"(from its runs of {small} and {large})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=2)
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--models", type=Path, help="an offline-models folder (default: built here)")
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--run-photos", default="16",
                        help="sizes of the single process_images runs measured, comma-separated (256: the default batch)")
    parser.add_argument("--instance", choices=["dev", "default"], default="dev",
                        help="the instance `vision-assets dev` writes (this project's event log, its pools), or "
                        "Dagster's default one (what the figures before column F ran on)")
    parser.add_argument("--in-process-only", action="store_true",
                        help="only the process_images run with models in the run (also runs on older commits)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="model-service-bench-"))
    models = args.models
    if models is None:
        from vision_assets.tools.offline_models import build_offline_models

        models = work / "models"
        build_offline_models(models, args.size)
    (work / "photos").mkdir()
    run_sizes = [int(size) for size in args.run_photos.split(",")]
    make_photos(work / "photos", max(args.photos, max(run_sizes) + 4), args.megapixels)
    every_photo = sorted((work / "photos").glob("*.jpg"))
    photos = every_photo[:args.photos]
    single_runs = {size: (every_photo[size:size + 4], every_photo[:size]) for size in run_sizes}
    home = work / "dagster-home"
    home.mkdir()
    write_instance(home, args.instance == "dev", runs=args.in_flight)
    if args.instance == "dev":
        prepare_runs(home, gpu_slots=args.in_flight)  # and the `gpu` pool as dev opens it: a slot per run in flight
    env = {"VISION_ASSETS_OFFLINE_MODELS": str(models), "VISION_ASSETS_DATA_DIR": str(work / "data"),
           "VISION_ASSETS_BATCH_SIZE": str(args.batch), "VISION_ASSETS_SETTLE_SECONDS": "0", "DAGSTER_HOME": str(home),
           "YOLO_CONFIG_DIR": str(work / "ultralytics"), "OMP_NUM_THREADS": "1"}

    for store, (written, copied) in working_copy_cost(photos[:16]).items():
        print(f"an upload that is its own working copy, {store}: written again {1000 * written:.1f} ms of CPU per "
              f"photo, copied within the store {1000 * copied:.1f} ms ({written / max(copied, 1e-9):.0f}x)")
    in_process = {}
    for size, (warm, measured) in single_runs.items():
        one_run = in_process_run(warm, measured, env, work, f"in-process-{size}", dev_instance=args.instance == "dev")
        in_process[size] = one_run["cpu"] - one_run["inside"]
        print(f"one process_images run over {size} photos of {args.megapixels:g} MP, {args.size} models in the run: "
              f"non-model CPU {1000 * in_process[size] / size:.0f} ms/image (model calls and loads "
              f"{1000 * one_run['inside'] / size:.0f} ms/image)", flush=True)
    print_fixed_and_per_photo("models in the run", in_process)
    if args.in_process_only:
        return
    alone = baseline(photos, env)
    fed = pipeline(work, photos, env, args.in_flight, single_runs, args.instance == "dev")
    before = fresh_run_cost(env)
    start_cpu = code_location_start_cpu(env)
    n = len(photos)
    alone_rate, fed_rate = n / alone["wall"], n / fed["wall"]
    alone_outside = (alone["cpu"] - alone["inside"]) / n
    fed_outside = (fed["run_cpu"] + fed["service_cpu"] - fed["service_model"]) / n
    print(f"{n} photos of {args.megapixels:g} MP, {args.size} models, batches of {args.batch}, "
          f"{args.in_flight} runs in flight, one torch thread")
    print(f"  models alone (baseline):   {alone_rate:6.2f} images/s   non-model CPU {1000 * alone_outside:6.0f} ms/image "
          f"(one full decode, the crops)")
    print(f"  pipeline + model service:  {fed_rate:6.2f} images/s   non-model CPU {1000 * fed_outside:6.0f} ms/image "
          f"(runs {1000 * fed['run_cpu'] / n:.0f}, service {1000 * (fed['service_cpu'] - fed['service_model']) / n:.0f})")
    per_image_runs = (fed["run_cpu"] - fed["runs"] * start_cpu) / n
    print(f"  of which each run's start-up (importing the code location: {start_cpu:.1f} s of CPU per run) "
          f"{1000 * fed['runs'] * start_cpu / n:.0f} ms/image; the rest, per image: "
          f"{1000 * (per_image_runs + (fed['service_cpu'] - fed['service_model']) / n):.0f} ms")
    print(f"  ratio pipeline / models alone: {fed_rate / alone_rate:.2f}")
    for size, through in fed["single"].items():
        print(f"  one process_images run over {size} photos through the service: non-model CPU "
              f"{1000 * (through['cpu'] + through['service']) / size:.0f} ms/image (run "
              f"{1000 * through['cpu'] / size:.0f}, service outside its models {1000 * through['service'] / size:.0f})")
    print_fixed_and_per_photo("through the service", {size: through["cpu"] + through["service"]
                                                      for size, through in fed["single"].items()})

    delays = sorted(fed["delays"])
    if delays:
        fixed = sorted(delay - ingest for delay, ingest in delays)
        print(f"  a run's launch to its first model stage: median {delays[len(delays) // 2][0]:.1f} s, max "
              f"{delays[-1][0]:.1f} s ({fed['runs']} runs; includes ingesting its {args.batch} photos); without the "
              f"ingest step (the fixed cost): median {fixed[len(fixed) // 2]:.1f} s, max {fixed[-1]:.1f} s")
    print(f"  before the service, a fresh run's model imports and loads alone: {before:.1f} s")


if __name__ == "__main__":
    main()
