"""What each member of the committee costs per crop (or per image), with the full offline twins on this machine.

    uv run python bench/expert_bench.py [--models DIR] [--crops 16] [--device cpu]

Builds the `full` twins (published architectures, input sizes and class counts; random weights) unless --models
names a folder that has them, then for every model: milliseconds per crop (batched, after a warm-up batch) and
GFLOP per crop (torch's FlopCounterMode over one forward pass, 2 FLOPs per multiply-add), through the product's
own wrappers so preprocessing is included in the time. The baseline, measured in the same run, is the cat expert
(ViT-B/16 at 224 px): every other row says how many of those it costs. The default wildlife expert, BioCLIP, is
measured with its ~450,000 taxon vectors, and the iNat21 expert it replaced beside it. It also measures CLIP's
second opinion per crop and the one-off prompt vectors for each expert's labels (for BioCLIP: its candidates per
crop). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from vision_assets.tools.offline_models import build_offline_models
from vision_assets.vision.committee.second_opinion import second_opinions
from vision_assets.vision.committee.zero_shot import Vocabulary, label_prompt
from vision_assets.vision.models.base import identity_for
from vision_assets.vision.models.cache import ModelCache
from vision_assets.vision.models.classifier import ImageClassifier
from vision_assets.vision.models.defaults import INAT21_WILDLIFE_MODEL
from vision_assets.vision.models.detector import YoloDetector
from vision_assets.vision.models.embedder import ClipEmbedder
from vision_assets.vision.models.offline_manifest import read_manifest
from vision_assets.vision.models.taxonomy import TaxonClassifier, is_taxonomic
from vision_assets.vision.process import hugging_face_offline
from vision_assets.vision.records import CropLabels, Detection, Label, SpecialistLabel

# Found, not imported: importing ultralytics sets OMP_NUM_THREADS=1, which would put torch on one core here.
PHOTOS = Path(importlib.util.find_spec("ultralytics").submodule_search_locations[0]) / "assets"


def crops(count: int) -> list[Image.Image]:
    """Crop-sized pieces of real photos, of varied shapes, as the router would cut them."""
    sources = [Image.open(PHOTOS / n).convert("RGB") for n in ("bus.jpg", "zidane.jpg")]
    pieces = []
    for i in range(count):
        source = sources[i % 2]
        width, height = 160 + 37 * (i % 5), 200 + 29 * (i % 7)
        left, top = (53 * i) % (source.width - width), (31 * i) % (source.height - height)
        pieces.append(source.crop((left, top, left + width, top + height)))
    return pieces


def gflop(forward) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        forward()
    return counter.get_total_flops() / 1e9


def timed(call, pieces: list, repeats: int = 2) -> float:
    """Milliseconds per item, the best of `repeats` batched passes (after one warm-up)."""
    call(pieces[:2])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call(pieces)
        best = min(best, time.perf_counter() - started)
    return 1000 * best / len(pieces)


def classifier_row(name: str, model_id: str, cache: ModelCache, pieces, device: str) -> dict:
    expert = ImageClassifier(identity_for(model_id, cache=cache), device=device, batch_size=16, cache=cache)
    processor, model, keep, labels = expert.load()
    pixels = processor(images=pieces[:1], return_tensors="pt")["pixel_values"].to(device)
    return {
        "role": name, "model": model_id, "architecture": type(model).__name__, "input": int(pixels.shape[-1]),
        "classes": len(keep), "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflop": gflop(lambda: model(pixel_values=pixels)), "ms": timed(expert.classify, pieces),
        "labels": [str(labels[i]) for i in keep],
    }


def taxon_row(name: str, model_id: str, cache: ModelCache, pieces, device: str) -> dict:
    """BioCLIP: the image tower plus one product against every taxon vector (counted in the GFLOP)."""
    expert = TaxonClassifier(identity_for(model_id, cache=cache), device=device, batch_size=16, cache=cache)
    model, preprocess, taxa, names = expert.load()
    pixels = preprocess(pieces[0]).unsqueeze(0).to(device)
    started = time.perf_counter()
    labels = expert.label_names
    naming = time.perf_counter() - started
    print(f"  {name}: {len(names):,} taxa, {taxa.numel() * taxa.element_size() / 1e9:.2f} GB of taxon vectors in "
          f"memory; naming them all (the review config) {naming:.1f} s", flush=True)
    return {
        "role": name, "model": model_id, "architecture": f"OpenCLIP {type(model.visual).__name__} + taxa",
        "input": int(pixels.shape[-1]), "classes": len(names),
        "params_m": sum(p.numel() for p in model.visual.parameters()) / 1e6,
        "gflop": gflop(lambda: model.encode_image(pixels) @ taxa), "ms": timed(expert.classify, pieces),
        "labels": labels,
    }


def detector_row(model_name: str, cache: ModelCache, images, device: str) -> dict:
    import torch

    detector = YoloDetector(identity_for(model_name, cache=cache), device=device, batch_size=8, cache=cache,
                            confidence=0.05, max_detections=4)
    network = detector.load().model
    return {
        "role": "router (per image)", "model": model_name, "architecture": type(network).__name__, "input": 640,
        "classes": len(detector.class_names), "params_m": sum(p.numel() for p in network.parameters()) / 1e6,
        "gflop": gflop(lambda: network(torch.zeros(1, 3, 640, 640, device=device))),
        "ms": timed(detector.detect, images),
    }


def clip_row(manifest: dict, cache: ModelCache, pieces, device: str) -> tuple[dict, ClipEmbedder]:
    clip = ClipEmbedder(identity_for(manifest["clip"]["model"], cache=cache), device=device, batch_size=32,
                        pretrained=manifest["clip"]["pretrained"], cache=cache)
    model, preprocess, _ = clip.load()
    pixels = preprocess(pieces[0]).unsqueeze(0).to(device)
    return {
        "role": "generalist (per image or crop)", "model": f"{manifest['clip']['model']}/{manifest['clip']['pretrained']}",
        "architecture": "OpenCLIP image tower", "input": int(pixels.shape[-1]), "classes": clip.dimension,
        "params_m": sum(p.numel() for p in model.visual.parameters()) / 1e6,
        "gflop": gflop(lambda: model.encode_image(pixels)), "ms": timed(clip.embed_images, pieces),
    }, clip


def second_opinion_cost(clip: ClipEmbedder, detector_names: list[str], experts: dict[str, list[str]], pieces) -> None:
    print("\nCLIP's second opinion (zero-shot over the detector's classes and the routed expert's labels):")
    detector = Vocabulary(detector_names, clip.embed_texts([label_prompt(n) for n in detector_names]))
    crop_vectors = clip.embed_images(pieces)
    for name, labels in experts.items():
        started = time.perf_counter()
        vectors = clip.embed_texts([label_prompt(label) for label in labels])
        once = time.perf_counter() - started
        vocabulary = Vocabulary(labels, vectors)
        judged = [CropLabels(detection_index=i, crop_box=[0, 0, 1, 1],
                             detection=Detection(box=[0, 0, 1, 1], class_id=0, class_name=detector_names[0], confidence=1),
                             specialist=SpecialistLabel(specialist=name, model="m", threshold=0.5, needs_review=False,
                                                        labels=[Label(name=labels[0], confidence=1.0)]))
                  for i in range(len(pieces))]
        started = time.perf_counter()
        for _ in range(5):
            second_opinions(judged, crop_vectors, detector, {name: vocabulary}, "clip", 0.5)
        per_crop = (time.perf_counter() - started) / 5 / len(pieces)
        print(f"  {name:<13} {len(labels):>6} labels: {per_crop * 1000:.3f} ms per crop; prompt vectors once per model "
              f"{once:.1f} s ({len(labels) / once:.0f} labels/s, then read from the cache)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="a folder from `models build-offline --size full` (else built)")
    parser.add_argument("--crops", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    hugging_face_offline()
    import torch

    work = Path(tempfile.mkdtemp(prefix="expert-bench-"))
    folder = args.models or work / "models"
    if not (folder / "offline.json").exists():
        print(f"building the full offline twins in {folder} ...", flush=True)
        build_offline_models(folder, "full")
    manifest = read_manifest(folder)
    assert manifest["size"] == "full", "the bench needs the full twins (--size full)"
    cache = ModelCache.at(manifest["model_cache"])
    pieces = crops(args.crops)
    images = [Image.open(PHOTOS / n).convert("RGB") for n in ("bus.jpg", "zidane.jpg")] * 4
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{len(pieces)} crops per timing", flush=True)

    rows = []
    experts = list(manifest["specialists"].items()) + [("wildlife (iNat21)", INAT21_WILDLIFE_MODEL)]
    for name, model_id in experts:
        row = taxon_row if is_taxonomic(model_id) else classifier_row
        rows.append(row(name, model_id, cache, pieces, args.device))
        print(f"  measured {name}", flush=True)
    clip, embedder = clip_row(manifest, cache, pieces, args.device)
    rows.append(clip)
    for detector in ("yolov8n.pt", "yolov8m.pt"):
        rows.append(detector_row(detector, cache, images, args.device))
    [baseline] = [row for row in rows if row["role"] == "cat_breeds"]

    print("\n| role | model | architecture | input px | classes | params (M) | GFLOP | ms | x cat expert (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['role']} | `{row['model']}` | {row['architecture']} | {row['input']} | {row['classes']} | "
              f"{row['params_m']:.1f} | {row['gflop']:.1f} | {row['ms']:.1f} | {row['ms'] / baseline['ms']:.2f} |")
    print("\nms: per crop for experts and CLIP, per image for the router (batched, preprocessing included); "
          "achieved GFLOP/s: " + ", ".join(f"{r['role']} {r['gflop'] / r['ms'] * 1000:.0f}" for r in rows))
    # Vocabularies CLIP embeds whole; BioCLIP's Tree of Life is audited among each crop's candidates instead.
    experts = {row["role"]: row["labels"] for row in rows if "labels" in row and 2 < len(row["labels"]) <= 20_000}
    candidates = [row["labels"][:3] for row in rows if len(row.get("labels", [])) > 20_000]
    for top_k in candidates:
        prompts = [label_prompt(f"{label} {i}") for i in range(len(pieces)) for label in top_k]
        started = time.perf_counter()
        embedder.embed_texts(prompts)
        print(f"\nBioCLIP's candidates for CLIP's second opinion: {len(prompts)} prompts (3 per crop, none cached) "
              f"{1000 * (time.perf_counter() - started) / len(pieces):.1f} ms per crop")
    second_opinion_cost(embedder, YoloDetector(identity_for("yolov8n.pt", cache=cache), device=args.device,
                                               cache=cache).class_names, experts, pieces)


if __name__ == "__main__":
    main()
