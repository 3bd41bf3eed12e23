"""fp32 against bf16 (and fp16 on a GPU) for every model of the committee on this machine: speed, agreement, and how
close each comes to what the hardware can do.

    uv run python bench/precision_bench.py [--models DIR] [--crops 24] [--device cpu]

Builds the `full` twins unless --models names a folder that has them (`models build-offline --size full`). For
each model, through the product's own wrappers (preprocessing included), with the precision the product would
use for it (`fp32`, `bf16`: weights in bf16; the detector's bf16 is autocast, ultralytics has no bf16 weights):
  - milliseconds per item (batched, best of two after a warm-up) and the speed-up of bf16 over fp32;
  - achieved GFLOP/s (FLOPs from torch's FlopCounterMode, 2 per multiply-add) as a fraction of this machine's
    matmul peak at that precision, measured first in the same run (the baseline);
  - agreement of bf16 with fp32 on the same photos: CLIP cosine (min), classifier top-1, detector boxes matched at
    IoU 0.5 with the same class.
The twins have random weights, so their outputs are nearly ties (a classifier's top two logits a hair apart): the
agreement here is a pessimistic bound; trained models decide by wide margins. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from bench.expert_bench import PHOTOS, crops, gflop
from vision_assets.tools.offline_models import build_offline_models
from vision_assets.vision.models.base import identity_for
from vision_assets.vision.models.cache import ModelCache
from vision_assets.vision.models.classifier import ImageClassifier
from vision_assets.vision.models.detector import YoloDetector
from vision_assets.vision.models.embedder import ClipEmbedder
from vision_assets.vision.models.offline_manifest import read_manifest
from vision_assets.vision.models.taxonomy import TaxonClassifier, is_taxonomic

PRECISIONS = ("fp32", "bf16")


def matmul_peak(dtype_name: str, seconds: float = 1.5) -> float:
    """GFLOP/s of large square matmuls, the best over a few sizes: the most this machine's cores do at that
    precision."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    best = 0.0
    for size in (1024, 2048, 3072):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        for _ in range(3):
            a @ b
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            count += 1
        best = max(best, 2 * size**3 * count / (time.perf_counter() - started) / 1e9)
    return best


def timed(call, items: list, repeats: int = 2):
    """(ms per item, the outputs): the best of `repeats` batched passes after a warm-up."""
    call(items[:2])
    best, out = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        out = call(items)
        best = min(best, time.perf_counter() - started)
    return 1000 * best / len(items), out


def iou(a, b) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def boxes_matched(reference, other) -> tuple[int, int]:
    """(reference boxes with a box of the same class at IoU >= 0.5 in `other`, reference boxes)."""
    matched = total = 0
    for ref_boxes, other_boxes in zip(reference, other, strict=True):
        for box in ref_boxes:
            total += 1
            matched += any(o.class_id == box.class_id and iou(o.box, box.box) >= 0.5 for o in other_boxes)
    return matched, total


def raw_head_error(detector: YoloDetector, device: str) -> str:
    """What bf16 autocast does to the detector's raw output (boxes and class scores for every anchor, before the
    confidence cut and NMS), on real photos: the comparison random weights still allow."""
    import torch

    network = detector.load().model.eval()
    photos = [Image.open(PHOTOS / n).convert("RGB").resize((640, 640)) for n in ("bus.jpg", "zidane.jpg")]
    pixels = torch.stack([torch.from_numpy(np.asarray(p)).permute(2, 0, 1).float() / 255 for p in photos]).to(device)
    with torch.inference_mode():
        reference = network(pixels)[0].float()
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            lowered = network(pixels)[0].float()
    boxes, scores = reference[:, :4], reference[:, 4:]
    box_error = (lowered[:, :4] - boxes).abs().median().item()
    score_error = (lowered[:, 4:] - scores).abs().max().item()
    return (f"box coordinates median error {box_error:.2f} px, class scores max error {score_error:.4f} "
            f"(scores span {scores.min().item():.3f}-{scores.max().item():.3f})")


def measure(name: str, build, forward_flops, call, items, agreement, precisions=PRECISIONS) -> list[dict]:
    rows, outputs = [], {}
    for precision in precisions:
        model = build(precision)
        flops = forward_flops(model)
        ms, outputs[precision] = timed(lambda batch, m=model: call(m, batch), items)
        rows.append({"model": name, "precision": precision, "ms": ms, "gflop": flops})
        model.unload()
        print(f"  {name} {precision}: {ms:.1f} ms/item", flush=True)
    for row in rows[1:]:
        row["agreement"] = agreement(outputs["fp32"], outputs[row["precision"]])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="a folder from `models build-offline --size full` (else built)")
    parser.add_argument("--crops", type=int, default=24)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default="", help="comma-separated model names to measure (default: all)")
    args = parser.parse_args()
    import torch

    folder = args.models or Path(tempfile.mkdtemp(prefix="precision-bench-")) / "models"
    if not (folder / "offline.json").exists():
        print(f"building the full offline twins in {folder} ...", flush=True)
        build_offline_models(folder, "full")
    manifest = read_manifest(folder)
    cache = ModelCache.at(manifest["model_cache"])
    device = args.device
    pieces = crops(args.crops)
    photos = [Image.open(PHOTOS / n).convert("RGB") for n in ("bus.jpg", "zidane.jpg")]
    images = [photo.rotate(angle, expand=True) for angle in (0, 90, 180, 270) for photo in photos]
    peaks = {p: matmul_peak(p) for p in PRECISIONS} if device == "cpu" else {}
    # On a GPU fp16 too: what `auto` gives the detector there (ultralytics' half).
    precisions = (*PRECISIONS, "fp16") if device.startswith("cuda") else PRECISIONS
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; matmul peak "
          + ", ".join(f"{p} {v:.0f} GFLOP/s" for p, v in peaks.items()), flush=True)

    def top1(a, b):
        differing = [x for x, y in zip(a, b, strict=True) if x[0].name != y[0].name]
        same = len(a) - len(differing)
        margins = ", ".join(f"{x[0].confidence - x[1].confidence:.4f}" for x in differing)
        change = max(abs(x[0].confidence - y[0].confidence) for x, y in zip(a, b, strict=True))
        decided = [(x, y) for x, y in zip(a, b, strict=True) if x[0].confidence - x[1].confidence >= 2 * change]
        return f"top-1 {same}/{len(a)} = {same / len(a):.0%}" + (
            f" (fp32's top-2 margin where they differ: {margins})" if differing else "") + (
            f"; top-1 probability changes by at most {change:.4f}; where fp32's margin is over twice that: "
            f"{sum(x[0].name == y[0].name for x, y in decided)}/{len(decided)} agree")

    def cosine(a, b):
        return f"cosine min {float(np.min(np.sum(a * b, axis=1))):.4f}"

    def detections(a, b):
        matched, total = boxes_matched(a, b)
        return f"boxes {matched}/{total} = {matched / max(1, total):.0%} (IoU 0.5, same class)"

    wanted = set(filter(None, args.only.split(",")))
    rows: list[dict] = []
    for role, model_id in manifest["specialists"].items():
        if wanted and role not in wanted:
            continue

        taxonomic = is_taxonomic(model_id)  # BioCLIP, the wildlife expert: OpenCLIP against its taxa's vectors

        def build(precision, model_id=model_id, taxonomic=taxonomic):
            kind = TaxonClassifier if taxonomic else ImageClassifier
            return kind(identity_for(model_id, cache=cache), device=device, precision=precision, batch_size=8,
                        cache=cache)

        def flops(model, taxonomic=taxonomic):
            if taxonomic:
                network, preprocess, taxa, _ = model.load()
                pixels = preprocess(pieces[0]).unsqueeze(0).to(device, taxa.dtype)
                return gflop(lambda: network.encode_image(pixels) @ taxa)
            processor, network, _, _ = model.load()
            pixels = processor(images=pieces[:1], return_tensors="pt")["pixel_values"].to(device, network.dtype)
            return gflop(lambda: network(pixel_values=pixels))

        rows += measure(role, build, flops, lambda m, batch: m.classify(batch), pieces, top1, precisions)

    if not wanted or "clip" in wanted:
        def build_clip(precision):
            return ClipEmbedder(identity_for(manifest["clip"]["model"], cache=cache), device=device,
                                precision=precision, batch_size=32, pretrained=manifest["clip"]["pretrained"],
                                cache=cache)

        def clip_flops(model):
            network, preprocess, _ = model.load()
            dtype = next((p.dtype for p in network.visual.parameters() if p.dtype != torch.float32), torch.float32)
            pixels = preprocess(pieces[0]).unsqueeze(0).to(device, dtype)
            return gflop(lambda: network.encode_image(pixels))

        rows += measure("clip", build_clip, clip_flops, lambda m, batch: m.embed_images(batch), pieces, cosine, precisions)

    for detector in ("yolov8n.pt", "yolov8m.pt"):
        if wanted and detector not in wanted:
            continue

        def build_detector(precision, detector=detector):
            return YoloDetector(identity_for(detector, cache=cache), device=device, precision=precision,
                                batch_size=8, cache=cache, confidence=0.05, max_detections=50)

        def detector_flops(model):
            network = model.load().model
            return gflop(lambda: network(torch.zeros(1, 3, 640, 640, device=device)))

        rows += measure(detector, build_detector, detector_flops, lambda m, batch: m.detect(batch), images, detections, precisions)
        # The noise floor: fp32 against itself. Random weights score hundreds of boxes alike, so which survive the
        # confidence cut and NMS changes with rounding alone.
        again = build_detector("fp32")
        rows[-1]["agreement"] += f"; fp32 vs fp32 again: {detections(again.detect(images), again.detect(images))}"
        rows[-1]["agreement"] += f"; raw head: {raw_head_error(again, device)}"

    print("\n| model | precision | ms/item | speed-up | GFLOP/item | GFLOP/s | of peak | against fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    fp32_ms = {}
    for row in rows:
        fp32_ms.setdefault(row["model"], row["ms"])
        achieved = row["gflop"] / row["ms"] * 1000
        peak = peaks.get(row["precision"])
        print(f"| {row['model']} | {row['precision']} | {row['ms']:.1f} | {fp32_ms[row['model']] / row['ms']:.2f}x | "
              f"{row['gflop']:.1f} | {achieved:.0f} | {f'{achieved / peak:.0%}' if peak else '-'} | "
              f"{row.get('agreement', '')} |")


if __name__ == "__main__":
    main()
