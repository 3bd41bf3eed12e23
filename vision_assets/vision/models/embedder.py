"""The generalist: OpenCLIP image and text towers, L2-normalised embeddings in one shared space."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .base import Model, ModelLoadError, batches, torch_dtype
from .hub import hugging_face_offline_unless_reachable

# A local model folder (from `vision-assets models build-offline`) holds `<name>.json` (an OpenCLIP model config)
# and `weights.pt` (its state dict); hub models are an architecture name plus a pretrained tag.
LOCAL_WEIGHTS = "weights.pt"


class ClipEmbedder(Model):
    def __init__(self, *args, pretrained: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.pretrained = pretrained

    def _architecture_and_weights(self) -> tuple[str, str]:
        import open_clip

        source = Path(self.identity.model_id)
        if source.is_dir():
            configs = sorted(source.glob("*.json"))
            if len(configs) != 1 or not (source / LOCAL_WEIGHTS).exists():
                raise ModelLoadError(f"{source} should hold one OpenCLIP config (*.json) and {LOCAL_WEIGHTS}")
            open_clip.add_model_config(configs[0])
            return configs[0].stem, str(source / LOCAL_WEIGHTS)
        if self.pretrained and not Path(self.pretrained).exists():
            hugging_face_offline_unless_reachable()  # open_clip fetches pretrained tags from the Hugging Face hub
        return self.identity.model_id, self.pretrained

    def _load(self):
        import open_clip

        torch_dtype(self.precision, self.device)  # refuses a bad precision/device pair before any weights are read
        architecture, weights = self._architecture_and_weights()
        model, _, preprocess = open_clip.create_model_and_transforms(
            architecture, pretrained=weights or None, device=self.device, precision=self.precision
        )
        model.eval()
        return model, preprocess, open_clip.get_tokenizer(architecture)

    @property
    def dimension(self) -> int:
        model, _, _ = self.load()
        return int(model.text_projection.shape[1] if getattr(model, "text_projection", None) is not None
                   else model.visual.output_dim)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        model, preprocess, _ = self.load()
        vectors = []
        for batch in batches(images, self.batch_size):
            pixels = torch.stack([preprocess(image) for image in batch]).to(self.device)
            with torch.inference_mode():
                vectors.append(model.encode_image(pixels, normalize=True).float().cpu().numpy())
        return _stacked(vectors, self.dimension)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        model, _, tokenizer = self.load()
        vectors = []
        for batch in batches(texts, self.batch_size):
            with torch.inference_mode():
                vectors.append(model.encode_text(tokenizer(list(batch)).to(self.device), normalize=True).float().cpu().numpy())
        return _stacked(vectors, self.dimension)


def _stacked(vectors: list[np.ndarray], dimension: int) -> np.ndarray:
    return np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, dimension), np.float32)

