"""What the referee costs: crops per second with the real-size twin of SmolVLM2-256M, and its share of a batch's model
time beside the committee, measured in the same run.

    uv run python bench/referee_bench.py [--crops 16] [--choices 4] [--crops-per-image 4] [--device cpu]

Builds the `full` twins this needs in a temporary folder (random weights, the published architectures and input
sizes): the referee (SmolVLM2-256M's shape: SigLIP at one 512 px tile, 64 image tokens, a 30-layer SmolLM2), and
the baseline committee: the router (YOLOv8n at 640 px), the generalist (CLIP ViT-B/32) and one expert (ViT-B/16,
the cat expert). Each is timed through the product's own classes after a warm-up, in the precision `auto` picks on
this device. The referee answers one closed question per crop (`--choices` labels and "none"), all of a chunk's
crops in one call as the stage asks them.

The share: per image the committee costs the router once, CLIP on the image and its crops and the expert on its
crops; the referee costs its seconds per crop times the doubtful crops. Printed for several doubtful fractions and
at the default budget (256 crops per 256-image batch). A random-weight twin's time is the real model's (same shapes);
its answers are not. Not part of the test suite.
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

from PIL import Image

from vision_assets.tools.offline_models import (
    CAT_BREEDS,
    _build_detector,
    _full_clip,
    _random_weights_expected,
    _smolvlm,
    _vit_classifier,
)
from vision_assets.vision.models.base import ModelIdentity
from vision_assets.vision.models.classifier import ImageClassifier
from vision_assets.vision.models.defaults import CLIP_ARCHITECTURE
from vision_assets.vision.models.detector import YoloDetector
from vision_assets.vision.models.embedder import ClipEmbedder
from vision_assets.vision.models.referee import Question, VisionLanguageReferee, closed_prompt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from expert_bench import PHOTOS, crops

BREEDS = ["golden retriever", "labrador retriever", "flat-coated retriever", "beagle", "Chesapeake Bay retriever"]


def photos() -> list[Image.Image]:
    return [Image.open(PHOTOS / name).convert("RGB") for name in ("bus.jpg", "zidane.jpg")]


def timed(call, repeats: int = 1) -> float:
    call()  # warm-up: first-call allocations, lazy inits
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=int, default=16)
    parser.add_argument("--choices", type=int, default=4, help="labels per question, besides 'none'")
    parser.add_argument("--crops-per-image", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="referee-bench-"))
    started = time.perf_counter()
    with _random_weights_expected():
        for name, write in [("referee", _smolvlm), ("clip", _full_clip),
                            ("cat", lambda target, size: _vit_classifier(target, size, CAT_BREEDS))]:
            (folder / name).mkdir()
            write(folder / name, "full")
        _build_detector(folder / "ultralytics", "yolov8n.pt")
    print(f"built the full twins in {time.perf_counter() - started:.0f}s under {folder}")

    pieces, pictures = crops(args.crops), photos()
    referee = VisionLanguageReferee(ModelIdentity(str(folder / "referee")), device=args.device, batch_size=args.crops)
    choices = tuple(BREEDS[:args.choices])
    questions = [Question(piece, closed_prompt("a dog", choices), choices) for piece in pieces]
    referee_total = timed(lambda: referee.judge(questions))
    per_crop = referee_total / len(questions)
    parameters = sum(p.numel() for p in referee.load()[1].parameters()) / 1e6
    print(f"referee ({parameters:.0f}M parameters, {referee.precision_used}, {args.device}): "
          f"{len(questions)} crops x {len(choices) + 1} answers in {referee_total:.2f}s: {1 / per_crop:.2f} crops/s, "
          f"{1000 * per_crop:.0f} ms/crop")

    detector = YoloDetector(ModelIdentity(str(folder / "ultralytics" / "yolov8n.pt")), device=args.device)
    clip = ClipEmbedder(ModelIdentity(CLIP_ARCHITECTURE), device=args.device,
                        pretrained=str(folder / "clip" / "open_clip_model.safetensors"))
    expert = ImageClassifier(ModelIdentity(str(folder / "cat")), device=args.device, batch_size=args.crops)
    router = timed(lambda: detector.detect(pictures)) / len(pictures)
    embed = timed(lambda: clip.embed_images(pieces)) / len(pieces)
    classify = timed(lambda: expert.classify(pieces)) / len(pieces)
    k = args.crops_per_image
    committee = router + embed * (1 + k) + classify * k
    print(f"baseline, same run: router {1000 * router:.0f} ms/image, CLIP {1000 * embed:.0f} ms/picture, expert "
          f"{1000 * classify:.0f} ms/crop: the committee {1000 * committee:.0f} ms per image of {k} crops")
    print(f"the referee costs {per_crop / classify:.1f} expert crops per crop")
    print("doubtful crops | referee's share of a batch's model time")
    for fraction in (0.05, 0.1, 0.25, 1.0):
        referee_image = per_crop * k * fraction
        print(f"  {fraction:>5.0%}        | {referee_image / (committee + referee_image):.0%}")
    budgeted = per_crop * min(256, 256 * k) / 256  # the default budget: 256 crops per 256-image batch
    print(f"  budget (256 crops per 256 images, every crop doubtful) | "
          f"{budgeted / (committee + budgeted):.0%}")


if __name__ == "__main__":
    main()
