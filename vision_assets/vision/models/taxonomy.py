"""Taxonomic experts: an OpenCLIP image tower scored against precomputed text embeddings of every taxon, the way
BioCLIP (`hf-hub:imageomics/bioclip`, MIT) classifies over the Tree of Life.

How BioCLIP's label embeddings are distributed, and loaded here the same way: not in the model repository but in
the TreeOfLife-10M dataset repository on the Hugging Face hub, `embeddings/txt_emb_species.npy` (one column per
taxon: shape (512, taxa), each column a unit vector from BioCLIP's text tower over its taxonomic prompts) and
`embeddings/txt_emb_species.json` (per column: `[[kingdom, phylum, class, order, family, genus, epithet],
common name]`). Both go through `hf_hub_download` into the same cache as the model, so a pre-filled cache (and the
offline twins) serves them without a network. Preprocessing follows BioCLIP's reference code (pybioclip): the crop
resized to 224 x 224 without cropping, CLIP's normalisation; probabilities are a softmax of the model's own
`logit_scale` times the cosine similarities.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..chunking import chunked
from ..records import Label
from .base import Model, torch_dtype
from .hub import hugging_face_offline_unless_reachable
from .inputs import visual_side

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus")


@dataclass(frozen=True)
class TaxaSource:
    """Where a taxonomic expert's label embeddings live: a hub dataset repo and the files' common stem."""

    repo: str
    stem: str


# Taxonomic experts this project knows, by model id: the model loads as an OpenCLIP `hf-hub:` model, and its taxa
# from here. BioCLIP 2 (`hf-hub:imageomics/bioclip-2`, TreeOfLife-200M) has the same layout.
TAXA_SOURCES = {
    "hf-hub:imageomics/bioclip": TaxaSource("imageomics/TreeOfLife-10M", "embeddings/txt_emb_species"),
    "hf-hub:imageomics/bioclip-2": TaxaSource("imageomics/TreeOfLife-200M", "embeddings/txt_emb_species"),
}


def is_taxonomic(model_id: str) -> bool:
    return model_id in TAXA_SOURCES


def taxon_label(entry: list, confidence: float) -> Label:
    """One row of the names file as a label: the binomial as the name, every rank and the common name beside it."""
    ranks, common = entry[0], entry[1] if len(entry) > 1 else ""
    taxonomy = {rank: str(value) for rank, value in zip(RANKS, ranks[:6]) if value}
    genus, epithet = (ranks[5] if len(ranks) > 5 else ""), (ranks[6] if len(ranks) > 6 else "")
    species = f"{genus} {epithet}".strip()
    if species and epithet:
        taxonomy["species"] = species
    if common:
        taxonomy["common_name"] = str(common)
    name = species if epithet else next((taxonomy[r] for r in reversed(RANKS) if r in taxonomy), "unknown taxon")
    return Label(name=name, confidence=confidence, taxonomy=taxonomy)


class TaxonClassifier(Model):
    """Top-k taxa per crop, each with kingdom to species and a common name where the names file has one."""

    def __init__(self, *args, top_k: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.top_k = top_k
        self.source = TAXA_SOURCES[self.identity.model_id]

    def _load(self):
        import open_clip
        import torch
        from huggingface_hub import hf_hub_download
        from torchvision import transforms

        hugging_face_offline_unless_reachable()
        dtype = torch_dtype(self.precision_used, self.device)
        model = open_clip.create_model(self.identity.model_id, device=self.device, precision=self.precision_used,
                                       cache_dir=self.cache.hub_dir)
        model.eval()
        fetch = lambda suffix: hf_hub_download(self.source.repo, f"{self.source.stem}{suffix}",
                                               repo_type="dataset", cache_dir=self.cache.hub_dir)
        vectors = np.load(fetch(".npy"))
        names = json.loads(Path(fetch(".json")).read_text(encoding="utf-8"))
        if vectors.shape[1] != len(names):
            raise ValueError(f"{self.source.repo}: {vectors.shape[1]} taxon vectors but {len(names)} names")
        taxa = torch.from_numpy(np.array(vectors)).to(self.device, dtype)  # (dimension, taxa), read once
        config = model.visual.preprocess_cfg
        size = model.visual.image_size
        preprocess = transforms.Compose([
            transforms.ToTensor(),
            transforms.Resize(tuple(size) if isinstance(size, (tuple, list)) else (size, size), antialias=True),
            transforms.Normalize(mean=config["mean"], std=config["std"]),
        ])
        return model, preprocess, taxa, names

    @property
    def label_names(self) -> list[str]:
        _, _, _, names = self.load()
        return [taxon_label(entry, 0.0).name for entry in names]

    @property
    def label_count(self) -> int:
        """How many taxa, without naming them: BioCLIP's ~450,000 names cost 2 s of CPU to build (measured)."""
        return len(self.load()[3])

    @property
    def input_side(self) -> int:
        return visual_side(self.load()[0])

    def classify(self, images: Sequence[Image.Image]) -> list[list[Label]]:
        import torch
        import torch.nn.functional as F

        model, preprocess, taxa, names = self.load()
        images = self.model_inputs(images)
        out: list[list[Label]] = []
        for batch in chunked(images, self.batch_size):
            pixels = torch.stack([preprocess(image.convert("RGB")) for image in batch]).to(self.device, taxa.dtype)
            with torch.inference_mode():
                features = F.normalize(model.encode_image(pixels), dim=-1)
                logits = model.logit_scale.exp().to(taxa.dtype) * features @ taxa
                top = logits.float().softmax(dim=1).topk(min(self.top_k, len(names)), dim=1)
            for scores, positions in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                out.append([taxon_label(names[p], round(s, 6)) for s, p in zip(scores, positions, strict=True)])
        return out
