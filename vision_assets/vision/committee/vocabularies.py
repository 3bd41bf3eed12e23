"""The vocabularies CLIP audits the committee over: prompt vectors for the detector's classes and each expert's
labels, made on first need."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from ..models.classifier import ImageClassifier
from ..models.taxonomy import TaxonClassifier
from ..records import CropLabels
from .zero_shot import Vocabulary, label_prompt

OPEN_VOCABULARY = 20_000  # labels above which an expert is audited among its own candidates, not its vocabulary


class TextEmbedder(Protocol):
    def prompt_vectors(self, prompts: Sequence[str]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


class Vocabularies:
    """Prompt vectors for the detector's classes and each expert's labels, made on first need: a run with no
    wildlife crop never touches the wildlife vocabulary (and the vectors are cached per model anyway). An expert
    whose vocabulary is too large to embed whole (BioCLIP's ~450,000 taxa) is audited among its own candidates:
    CLIP says which of the expert's top-k labels for the chunk's crops it believes, prompted by common name."""

    def __init__(self, embedder: Callable[[], TextEmbedder], detector_classes: Callable[[], list[str]],
                 experts: dict[str, ImageClassifier | TaxonClassifier]):
        # Callables: the models load on first need, not when a run that has no crop builds this.
        self._embedder, self._detector_classes, self._experts = embedder, detector_classes, experts
        self._made: dict[str, Vocabulary] = {}
        self._sizes: dict[str, int] = {}
        self._candidates: dict[str, np.ndarray] = {}  # prompt -> vector, for the open vocabularies

    def _vocabulary(self, name: str, labels: list[str]) -> Vocabulary:
        if name not in self._made:
            self._made[name] = Vocabulary(labels, self._embedder().prompt_vectors([label_prompt(label) for label in labels]))
        return self._made[name]

    @property
    def detector(self) -> Vocabulary:
        return self._vocabulary("detector", self._detector_classes())

    def experts(self, crops: list[CropLabels]) -> dict[str, Vocabulary]:
        routed: dict[str, list[CropLabels]] = {}
        for crop in crops:
            if crop.specialist:
                routed.setdefault(crop.specialist.specialist, []).append(crop)
        vocabularies = {}
        for name in sorted(routed):
            if name not in self._sizes:
                # The count alone: BioCLIP's ~450,000 names cost 2 s of CPU to build and 2 s to fetch from the
                # model service, per run, only to learn they are too many to embed.
                self._sizes[name] = self._experts[name].label_count
            if self._sizes[name] <= OPEN_VOCABULARY:
                vocabularies[name] = self._vocabulary(name, self._experts[name].label_names)
            else:
                vocabularies[name] = self._among_candidates(routed[name])
        return vocabularies

    def _among_candidates(self, crops: list[CropLabels]) -> Vocabulary:
        prompts = {label.name: label_prompt((label.taxonomy or {}).get("common_name") or label.name)
                   for crop in crops for label in crop.specialist.labels}
        missing = sorted({prompt for prompt in prompts.values() if prompt not in self._candidates})
        if missing:
            self._candidates.update(zip(missing, self._embedder().embed_texts(missing), strict=True))
        names = sorted(prompts)
        return Vocabulary(names, np.stack([self._candidates[prompts[n]] for n in names]))
