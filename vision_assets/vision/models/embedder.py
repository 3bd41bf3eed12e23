"""The generalist: OpenCLIP image and text towers, L2-normalised embeddings in one shared space."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..chunking import chunked
from .base import Model, torch_dtype
from .cache import HF_HUB_PREFIX
from .hub import hugging_face_offline_unless_reachable
from .inputs import visual_side

PROMPT_CACHE = "clip-prompts"  # text vectors, per model and prompt list, under the model cache


def default_cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vision-assets"


class ClipEmbedder(Model):
    """Architecture + pretrained tag (`ViT-B-32` + `laion2b_s34b_b79k`), `hf-hub:org/repo`, or `local-dir:/path`."""

    # bench/precision_bench.py: bf16 weights embed 2.0x faster on a CPU with AVX512-BF16/AMX, cosine to fp32 > 0.997;
    # where the CPU lacks bf16, `auto` stays fp32.
    AUTO_PRECISION = {"cpu": "bf16", "cuda": "bf16"}

    def __init__(self, *args, pretrained: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.pretrained = pretrained
        self._prompt_vectors: dict[str, np.ndarray] = {}

    def _load(self):
        import open_clip

        torch_dtype(self.precision_used, self.device)  # refuses a bad precision/device pair before any weights are read
        name = self.identity.model_id
        from_hub = name.startswith(HF_HUB_PREFIX) or (self.pretrained and not Path(self.pretrained).exists())
        if from_hub:
            hugging_face_offline_unless_reachable()  # OpenCLIP fetches pretrained weights from the Hugging Face hub
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=self.pretrained or None, device=self.device, precision=self.precision_used,
            cache_dir=self.cache.hub_dir,
        )
        model.eval()
        return model, preprocess, open_clip.get_tokenizer(name, cache_dir=self.cache.hub_dir)

    @property
    def dimension(self) -> int:
        model, _, _ = self.load()
        return int(model.text_projection.shape[1] if getattr(model, "text_projection", None) is not None
                   else model.visual.output_dim)

    @property
    def input_side(self) -> int:
        return visual_side(self.load()[0])

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        model, preprocess, _ = self.load()
        images = self.model_inputs(images)
        # bf16 weights need bf16 pixels (OpenCLIP keeps a few parameters, such as the logit scale, in fp32)
        dtype = next((p.dtype for p in model.visual.parameters() if p.dtype != torch.float32), torch.float32)
        vectors = []
        for batch in chunked(images, self.batch_size):
            pixels = torch.stack([preprocess(image) for image in batch]).to(self.device, dtype)
            with torch.inference_mode():
                # Normalised in fp32: a bf16 model's vectors normalised in bf16 miss unit length by 1e-3.
                vectors.append(_unit(model.encode_image(pixels)))
        return _stacked(vectors, self.dimension)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        model, _, tokenizer = self.load()
        vectors = []
        for batch in chunked(texts, self.batch_size):
            tokens = tokenizer(list(batch)).to(self.device)
            with torch.inference_mode():
                vectors.append(_unit(_encode_text(model, tokens)))
        return _stacked(vectors, self.dimension)

    def prompt_vectors(self, prompts: Sequence[str]) -> np.ndarray:
        """Text vectors for a fixed prompt list (an expert's labels, the scene vocabulary): computed once per model
        and kept on disk beside the model cache, because an expert with 10,000 classes costs minutes on a CPU."""
        digest = hashlib.sha256(
            "\n".join([str(self.identity), self.pretrained, self.precision_used, *prompts]).encode()
        ).hexdigest()[:24]
        if digest not in self._prompt_vectors:
            path = (self.cache.root or default_cache_home()) / PROMPT_CACHE / f"{digest}.npy"
            try:
                vectors = np.load(path)
            except (OSError, ValueError):
                vectors = self.embed_texts(prompts)
                _save_atomically(path, vectors)
            self._prompt_vectors[digest] = vectors
        return self._prompt_vectors[digest]


def _encode_text(model, tokens):
    """`encode_text`, on tokens trimmed to the longest prompt instead of padded to 77. CLIP's text tower is causal and
    pools at the end-of-text token, so the padding never reaches the result; it only cost compute (prompts are ~10
    tokens: 4-7x less). Other text towers take the padded tokens."""
    import open_clip
    import torch
    from open_clip.transformer import text_global_pool

    if type(model) is not open_clip.CLIP or model.text_pool_type != "argmax" or model.attn_mask is None:
        return model.encode_text(tokens)
    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, tokens, model.text_pool_type)
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection


def _unit(vectors) -> np.ndarray:
    """Unit length in fp32, whatever the model computed in."""
    import torch.nn.functional as F

    return F.normalize(vectors.float(), dim=-1).cpu().numpy()


def _save_atomically(path: Path, vectors: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial.npy")
        np.save(partial, vectors)
        os.replace(partial, path)
    except OSError:
        pass  # a read-only cache only costs the recomputation next time


def _stacked(vectors: list[np.ndarray], dimension: int) -> np.ndarray:
    return np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, dimension), np.float32)
