"""`vision-assets models build-offline DIR`: every model the pipeline loads, randomly initialised, saved in the
format its real loader reads (ultralytics checkpoint, OpenCLIP config + state dict, transformers
`save_pretrained` folders). Nothing is downloaded. `tiny` keeps tests fast; `full` has the real architectures
(YOLOv8m, ViT-B-32, ViT-B/16 classifiers), so benchmarks do the real amount of compute.

`offline.json` in the folder says where each model is and the detector settings that make random weights produce
boxes (a low confidence threshold and a cap), so crops exist for the experts.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..routing import CORAL, DEFAULT_ROUTES

MANIFEST = "offline.json"
SPECIALIST_LABELS: dict[str, list[str]] = {
    # `test` is there on purpose: real published models carry junk classes like it; configuration drops it.
    "dog_breeds": ["golden retriever", "labrador retriever", "beagle", "border collie", "poodle", "pug", "test"],
    "cat_breeds": ["siamese", "persian", "maine coon", "bengal", "sphynx"],
    "wildlife": ["bald eagle", "american robin", "grizzly bear", "plains zebra", "african elephant", "red fox"],
    CORAL: ["healthy coral", "bleached coral"],
}
SIZES = ("tiny", "full")
DETECTOR_SETTINGS = {"confidence": 0.05, "max_detections": 4}


def build_offline_models(folder: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}")
    import torch

    torch.manual_seed(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "size": size,
        "detector": {"model": _build_detector(folder, size), **DETECTOR_SETTINGS},
        "clip": {"model": _build_clip(folder, size)},
        "specialists": {name: _build_classifier(folder, name, labels, size) for name, labels in SPECIALIST_LABELS.items()},
        "drop_labels": ["test"],
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder / MANIFEST


def _build_detector(folder: Path, size: str) -> str:
    import torch
    import ultralytics
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml" if size == "tiny" else "yolov8m.yaml")
    coco = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg" / "datasets" / "coco.yaml").read_text())["names"]
    model.model.names = {int(k): v for k, v in coco.items()}
    # Ultralytics initialises the class logits to a bias so low that every class scores the same ~1e-4 everywhere:
    # every box would be class 0. Spread the weights and favour the routed classes, so random boxes land in a mix of
    # classes and every expert gets crops to work on.
    routed = {index for index, name in model.model.names.items() if name in DEFAULT_ROUTES}
    head = model.model.model[-1]
    with torch.no_grad():
        for branch in head.cv3:
            final = branch[-1]
            final.weight.normal_(0.0, 0.05)
            final.bias.fill_(-6.0)
            final.bias[sorted(routed)] = -2.5
    path = folder / "detector.pt"
    model.save(str(path))
    return path.name


def _build_clip(folder: Path, size: str) -> str:
    import open_clip
    import torch

    if size == "tiny":
        name, config = "offline-tiny-clip", {
            "embed_dim": 64,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
        }
    else:
        name, config = "offline-ViT-B-32", open_clip.get_model_config("ViT-B-32")
    target = folder / "clip"
    target.mkdir(exist_ok=True)
    config_path = target / f"{name}.json"
    config_path.write_text(json.dumps(config))
    open_clip.add_model_config(config_path)
    model = open_clip.create_model(name)
    torch.save(model.state_dict(), target / "weights.pt")
    return target.name


def _build_classifier(folder: Path, name: str, labels: list[str], size: str) -> str:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    shape = (
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
         "image_size": 32, "patch_size": 8}
        if size == "tiny"
        else {}  # ViTConfig's defaults are ViT-B/16 at 224 px
    )
    config = ViTConfig(**shape, id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    target = folder / name
    ViTForImageClassification(config).save_pretrained(target)
    side = config.image_size
    ViTImageProcessor(size={"height": side, "width": side}).save_pretrained(target)
    return target.name


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build it with `vision-assets models build-offline {folder}`")
    manifest = json.loads(path.read_text())
    resolve = lambda relative: str((Path(folder) / relative).resolve())  # noqa: E731
    manifest["detector"]["model"] = resolve(manifest["detector"]["model"])
    manifest["clip"]["model"] = resolve(manifest["clip"]["model"])
    manifest["specialists"] = {k: resolve(v) for k, v in manifest["specialists"].items()}
    return manifest
