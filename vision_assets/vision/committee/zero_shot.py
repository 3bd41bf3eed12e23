"""CLIP zero-shot classification over a fixed vocabulary, from vectors the run already has: image or crop vectors
against prompt vectors computed once per model (see `ClipEmbedder.prompt_vectors`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

CLIP_LOGIT_SCALE = 100.0  # CLIP's learned temperature, as in its zero-shot evaluation


def softmax_scores(vectors: np.ndarray, prompt_vectors: np.ndarray) -> np.ndarray:
    """Rows: L2-normalised vectors; columns: each prompt's probability among all prompts."""
    if len(vectors) == 0:
        return np.zeros((0, len(prompt_vectors)), np.float32)
    logits = CLIP_LOGIT_SCALE * (vectors @ prompt_vectors.T)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class Vocabulary:
    """Names and the prompt vector of each, in the same order."""

    names: list[str]
    vectors: np.ndarray
    positions: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", {name: i for i, name in enumerate(self.names)})

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        return softmax_scores(vectors, self.vectors)


def label_prompt(label: str) -> str:
    """A model's label as CLIP reads best: `golden_retriever` -> "a photo of a golden retriever."; leading dataset
    codes (`n02099601-`, `00123_`) dropped."""
    text = re.sub(r"^(n\d{8}|\d+)[-_ ]+", "", label)
    text = re.sub(r"[_\s]+", " ", text).strip() or label
    return f"a photo of a {text}."
