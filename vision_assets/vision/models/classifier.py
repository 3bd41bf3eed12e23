"""Specialists: image classifiers loaded through transformers' Auto classes, which pick the architecture from the
config: ViT, SigLIP, timm hub models (through transformers' timm wrapper), or local `save_pretrained` folders."""

from __future__ import annotations

import os
from collections.abc import Sequence

from PIL import Image

from ..chunking import chunked
from ..records import Label
from .base import Model, torch_dtype
from .hub import hugging_face_offline_unless_reachable


class ImageClassifier(Model):
    # bench/precision_bench.py (64 crops): bf16 weights run the ViT/SigLIP experts 1.9-2.1x faster on a CPU with
    # AVX512-BF16/AMX, top-1 agreeing with fp32 on 98-100% of crops; where the CPU lacks bf16, `auto` stays fp32.
    # An expert that agreed less says so through `auto_precision` (see SpecialistsResource).
    AUTO_PRECISION = {"cpu": "bf16", "cuda": "bf16"}

    def __init__(self, *args, top_k: int = 3, drop_labels: Sequence[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.top_k = top_k
        # Some published models carry junk classes (a stray `test` label): never report them.
        self.drop_labels = {label.lower() for label in drop_labels}

    def _load(self):
        if not os.path.exists(self.identity.model_id):
            hugging_face_offline_unless_reachable()
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        kwargs = self.revision_kwargs | {"cache_dir": self.cache.hub_dir}
        processor = AutoImageProcessor.from_pretrained(self.identity.model_id, **kwargs)
        model = AutoModelForImageClassification.from_pretrained(
            self.identity.model_id, dtype=torch_dtype(self.precision_used, self.device), **kwargs
        )
        model.to(self.device).eval()
        labels = model.config.id2label
        keep = [index for index, name in sorted(labels.items()) if str(name).lower() not in self.drop_labels]
        return processor, model, keep, labels

    @property
    def label_names(self) -> list[str]:
        """Every label the model can answer (junk classes left out), in class order."""
        _, _, keep, labels = self.load()
        return [str(labels[index]) for index in keep]

    @property
    def label_count(self) -> int:
        return len(self.load()[2])

    @property
    def input_side(self) -> int:
        size = getattr(self.load()[0], "size", None) or 0  # an int, a dict, or transformers' SizeDict
        if isinstance(size, int):
            return size
        sides = [size.get(n) if isinstance(size, dict) else getattr(size, n, None) for n in ("height", "width",
                                                                                              "shortest_edge")]
        return max((int(side) for side in sides if side), default=0)

    def classify(self, images: Sequence[Image.Image]) -> list[list[Label]]:
        import torch

        processor, model, keep, labels = self.load()
        images = self.model_inputs(images)
        keep_index = torch.tensor(keep, device=self.device)
        out: list[list[Label]] = []
        for batch in chunked(images, self.batch_size):
            inputs = processor(images=list(batch), return_tensors="pt").to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            with torch.inference_mode():
                logits = model(**inputs).logits.float()
            # Softmax over the classes we keep, so dropped junk classes take no probability mass.
            probabilities = logits.index_select(1, keep_index).softmax(dim=1)
            k = min(self.top_k, len(keep))
            top = probabilities.topk(k, dim=1)
            for scores, positions in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                out.append([
                    Label(name=str(labels[keep[p]]), confidence=round(s, 6)) for s, p in zip(scores, positions, strict=True)
                ])
        return out
