"""The router: ultralytics YOLO finds objects and their boxes."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from ..chunking import chunked
from ..process import import_ultralytics_yolo
from ..records import Detection
from .base import OFFLINE_HINT, Model, ModelLoadError, local_model_path, torch_dtype
from .hub import GITHUB, reachable
from .inputs import fit_within, scaled_box


class YoloDetector(Model):
    # bench/precision_bench.py: bf16 autocast runs YOLO 1.8-1.9x faster on a CPU with AVX512-BF16/AMX, but whether
    # its boxes agree with fp32 cannot be measured on random weights (NMS among near-equal scores follows rounding),
    # so `auto` keeps fp32 on a CPU until it is measured on trained ones; fp16 on a GPU (ultralytics' `half`).
    AUTO_PRECISION = {"cpu": "fp32", "cuda": "fp16"}

    def __init__(self, *args, confidence: float = 0.25, max_detections: int = 50, image_size: int = 640, **kwargs):
        super().__init__(*args, **kwargs)
        self.confidence = confidence
        self.max_detections = max_detections
        self.image_size = image_size

    @property
    def input_side(self) -> int:
        return self.image_size

    def _load(self):
        # A bare name (`yolov8n.pt`) is looked up in the model cache first; ultralytics then looks in the working
        # directory and its weights folder before it downloads from GitHub.
        local = local_model_path(self.identity.model_id, self.cache)
        if local is None and not reachable(GITHUB):
            raise ModelLoadError(f"{self.identity.model_id} is not a local file and {GITHUB}, where ultralytics "
                                 f"downloads checkpoints from, cannot be reached. {OFFLINE_HINT}")
        YOLO = import_ultralytics_yolo()
        model = YOLO(str(local or self.identity.model_id), task="detect")
        model.to(self.device)
        return model

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        import torch

        model = self.load()
        precision = self.precision_used
        torch_dtype(precision, self.device)  # refuses fp16 on the CPU
        options = {"half": True} if precision == "fp16" else {}
        # ultralytics has no bf16 weights: bf16 is autocast (weights fp32, convolutions and matmuls in bf16).
        computing = torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16")
        found: list[list[Detection]] = []
        for batch in chunked(images, self.batch_size):
            inputs = [fit_within(image, self.image_size) for image in batch]
            with computing:
                results = model.predict(
                    [shrunk for shrunk, _ in inputs],
                    conf=self.confidence,
                    max_det=self.max_detections,
                    imgsz=self.image_size,
                    device=self.device,
                    verbose=False,
                    **options,
                )
            for result, (_, (x_scale, y_scale)) in zip(results, inputs, strict=True):
                boxes = result.boxes
                found.append([
                    Detection(
                        box=scaled_box(xyxy, x_scale, y_scale),
                        class_id=int(class_id),
                        class_name=result.names[int(class_id)],
                        confidence=round(float(confidence), 6),
                    )
                    for xyxy, class_id, confidence in zip(
                        boxes.xyxy.tolist(), boxes.cls.tolist(), boxes.conf.tolist(), strict=True
                    )
                ])
        return found

    @property
    def class_names(self) -> list[str]:
        """The detector's whole vocabulary, in class-id order."""
        names = self.load().names
        return [names[index] for index in sorted(names)]
