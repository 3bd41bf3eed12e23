"""The GPU side of issue #38, without Dagster: can the model service keep a GPU busy with photos fed as the pipeline
feeds them? Meant for a machine with a GPU (one prepared run: bench/device_run.sh); it also runs on a CPU.

  1. models alone: the committee's models loaded in this process on the service's device, over the photos: each
     photo decoded once in full, the detector, CLIP on the photo and its crops, each expert on the crops routed to
     it, in chunks of `--chunk` photos (the baseline);
  2. fed: `vision-assets models serve` on that device, and `--feeders` processes doing a run's side of each photo as
     the stages do it (the ingest's reduced decode and the detector's JPEG input, the boxes, the crops cut from a
     decode at the scale they need, handed to the experts as JPEG), every model answer from the service.

Reported: images/s of each and their ratio (also against the model calls' time alone, what the device can do with
these batches); the feeders' CPU per photo (the run's side, without Dagster and the
stores: measured on the CPU machine by bench/model_service_bench.py) and the service's CPU outside its models; GPU
utilisation sampled every 0.2 s (NVML) while fed; the precision `auto` chose per model.

    uv run python bench/gpu_feed_bench.py [--photos 256] [--feeders 8] [--size tiny|full] [--models DIR]
"""

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

import requests

from bench.memory_bench import make_photos
from bench.model_service import group_cpu_seconds, model_seconds, model_service


def committee(service_url: str | None, device: str | None = None) -> tuple:
    """(detector, CLIP, experts by name, routes): in this process on `device`, or clients of the service."""
    from vision_assets.settings import Settings
    from vision_assets.vision.committee.routing import DEFAULT_ROUTES
    from vision_assets.vision.models.committee_models import committee_models
    from vision_assets.vision.models.remote import ModelServiceClient

    sets = committee_models(Settings.from_env())
    client = ModelServiceClient(service_url) if service_url else None
    models = {role: model for model_set in sets.values() for role, model in
              (model_set.remote_models(client) if client else model_set.local_models(device)).items()}
    experts = {name: models[name] for name in sets["specialists"].models}
    return models["detector"], models["embedder"], experts, DEFAULT_ROUTES


def models_alone(paths: list[str], device: str, chunk: int) -> dict:
    """The baseline: one full decode per photo, the models in this process."""
    from PIL import Image

    from vision_assets.vision.committee.routing import crop_box

    detector, clip, experts, routes = committee(None, device)
    warm = Image.new("RGB", (640, 480))
    detector.detect([warm]), clip.embed_images([warm]), [expert.classify([warm]) for expert in experts.values()]
    inside = 0.0  # wall time in the model calls (their answers are on the CPU: the device has finished)

    def timed(call, items):
        nonlocal inside
        began = time.perf_counter()
        try:
            return call(items)
        finally:
            inside += time.perf_counter() - began

    started, cpu, crops_seen = time.perf_counter(), time.process_time(), 0
    for start in range(0, len(paths), chunk):
        images = [Image.open(path).convert("RGB") for path in paths[start:start + chunk]]
        found = timed(detector.detect, images)
        crops = [(image.crop(tuple(crop_box(d.box, image.width, image.height, 0.1))), d.class_name)
                 for image, boxes in zip(images, found, strict=True) for d in boxes]
        timed(clip.embed_images, images + [crop for crop, _ in crops])
        for name, expert in experts.items():
            mine = [crop for crop, class_name in crops if routes.get(class_name) == name]
            if mine:
                timed(expert.classify, mine)
        crops_seen += len(crops)
    return {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu, "crops": crops_seen,
            "inside": inside,
            "precision": {role: getattr(model, "precision_used", "?") for role, model in
                          [("detector", detector), ("embedder", clip), *experts.items()]}}


def fed_share(args: tuple[str, list[str], int]) -> dict:
    """A feeder process: a run's side of each photo, as the stages do it, every model at the service."""
    from vision_assets.vision.committee.routing import box_size, crop_box
    from vision_assets.vision.images.crops import pack_crops, unpack_crops
    from vision_assets.vision.images.decoded_jpeg import opened_jpeg
    from vision_assets.vision.images.validation import ValidationLimits, encode_normalized, validate_image
    from vision_assets.vision.images.working import WorkingPicture, decode_working, scale_for_short_sides
    from vision_assets.vision.models.inputs import fit_within

    url, paths, chunk = args
    detector, clip, experts, routes = committee(url)
    limits, cpu, crops_seen = ValidationLimits(), time.process_time(), 0
    for start in range(0, len(paths), chunk):
        datas = [Path(path).read_bytes() for path in paths[start:start + chunk]]
        # source_images: the reduced decode validates and makes the detector's input (a JPEG, as stored)
        inputs = []
        for data in datas:
            valid = validate_image(data, limits, working_side=4096, reduced_side=detector.input_side)
            inputs.append(WorkingPicture(opened_jpeg(encode_normalized(fit_within(valid.rgb, detector.input_side)[0],
                                                                        quality=90)), valid.facts.width,
                                         valid.facts.height))
        # detections: the detector on the stored input; boxes in the working copy's pixels
        found = detector.detect([picture.image for picture in inputs])
        boxes = [[(picture.to_working(d.box), d.class_name) for d in ds] for picture, ds in zip(inputs, found, strict=True)]
        # embeddings: each photo decoded at the scale its crops need; CLIP on the photo and the crops
        side = clip.input_side
        handed = []
        for data, picture, mine in zip(datas, inputs, boxes, strict=True):
            cut = [crop_box(box, picture.width, picture.height, 0.1) for box, _ in mine]
            scale = scale_for_short_sides([((picture.width, picture.height), side)] + [(box_size(c), side) for c in cut])
            working = decode_working(data, scale)
            crops = [working.crop(c) for c in cut]
            clip.embed_images([working.image] + crops)
            handed.append(list(zip(unpack_crops(pack_crops(crops)) or [], [name for _, name in mine], strict=True)))
        # specialist_labels: each expert on the crops handed to it
        for name, expert in experts.items():
            routed = [crop for crops in handed for crop, class_name in crops if routes.get(class_name) == name]
            if routed:
                expert.classify(routed)
        crops_seen += sum(len(crops) for crops in handed)
    return {"cpu": time.process_time() - cpu, "crops": crops_seen}


def gpu_sampler(stop: threading.Event, samples: list[int]) -> None:
    import torch

    while not stop.is_set():
        try:
            samples.append(int(torch.cuda.utilization()))
        except Exception:  # noqa: BLE001 - NVML missing: no utilisation figure
            return
        time.sleep(0.2)


def fed(paths: list[str], feeders: int, chunk: int, env: dict[str, str], work: Path) -> dict:
    with model_service(env, work) as (service, url):
        fed_share((url, paths[:chunk], chunk))  # every model loaded at the service, as one that has been up a while
        accelerator = requests.get(url + "/v1/models", timeout=10).json().get("accelerator")
        shares = [(url, paths[i::feeders], chunk) for i in range(feeders)]
        service_cpu, service_model = group_cpu_seconds(service.pid), model_seconds(url)
        stop, samples = threading.Event(), []
        sampler = threading.Thread(target=gpu_sampler, args=(stop, samples), daemon=True)
        if accelerator == "cuda":
            sampler.start()
        started = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(feeders) as pool:
            done = pool.map(fed_share, shares)
        wall = time.perf_counter() - started
        stop.set()
        return {"wall": wall, "feeder_cpu": sum(d["cpu"] for d in done), "crops": sum(d["crops"] for d in done),
                "service_cpu": group_cpu_seconds(service.pid) - service_cpu,
                "service_model": model_seconds(url) - service_model, "gpu": samples, "accelerator": accelerator,
                "metrics": requests.get(url + "/metrics", timeout=10).text}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=256)
    parser.add_argument("--feeders", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--models", type=Path, help="an offline-models folder (default: built here)")
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--out", type=Path, help="where to write the figures as JSON too")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpu-feed-bench-"))
    models = args.models
    if models is None:
        from vision_assets.tools.offline_models import build_offline_models

        started = time.perf_counter()
        models = work / "models"
        build_offline_models(models, args.size)
        print(f"{args.size} twins built in {time.perf_counter() - started:.0f} s", flush=True)
    (work / "photos").mkdir()
    make_photos(work / "photos", args.photos, args.megapixels)
    paths = sorted(str(p) for p in (work / "photos").glob("*.jpg"))
    env = {"VISION_ASSETS_OFFLINE_MODELS": str(models), "VISION_ASSETS_DATA_DIR": str(work / "data"),
           "YOLO_CONFIG_DIR": str(work / "ultralytics"), "VISION_ASSETS_MODEL_DEVICES": "auto"}
    os.environ.update(env)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    alone = models_alone(paths, device, args.chunk)
    print(f"models alone on {device}: {len(paths) / alone['wall']:.1f} images/s in one process with its decodes, "
          f"{len(paths) / alone['inside']:.1f} images/s counting only the model calls ({alone['crops']} crops; "
          f"precision {alone['precision']})", flush=True)
    if device == "cuda":
        torch.cuda.empty_cache()
    through = fed(paths, args.feeders, args.chunk, env, work)
    n = len(paths)
    figures = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "photos": n,
        "megapixels": args.megapixels, "size": args.size, "feeders": args.feeders,
        "alone_images_per_s": n / alone["wall"], "alone_model_calls_images_per_s": n / alone["inside"],
        "fed_images_per_s": n / through["wall"], "ratio": alone["wall"] / through["wall"],
        "ratio_to_model_calls": alone["inside"] / through["wall"], "feeder_cpu_ms_per_photo": 1000 * through["feeder_cpu"] / n,
        "service_cpu_outside_models_ms_per_photo": 1000 * (through["service_cpu"] - through["service_model"]) / n,
        "gpu_utilisation_mean": sum(through["gpu"]) / len(through["gpu"]) if through["gpu"] else None,
        "precision": alone["precision"], "crops": through["crops"],
    }
    print(f"fed through the model service ({through['accelerator']}), {args.feeders} feeders: "
          f"{figures['fed_images_per_s']:.1f} images/s, ratio to the models alone {figures['ratio']:.2f} (to their "
          f"model calls alone {figures['ratio_to_model_calls']:.2f}); a run's side "
          f"{figures['feeder_cpu_ms_per_photo']:.0f} ms of CPU per photo, the service outside its models "
          f"{figures['service_cpu_outside_models_ms_per_photo']:.0f} ms; GPU utilisation "
          f"{figures['gpu_utilisation_mean'] if figures['gpu_utilisation_mean'] is not None else 'n/a'}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1) + "\n")
        (args.out.parent / "model-service-metrics.txt").write_text(through["metrics"])


if __name__ == "__main__":
    main()
