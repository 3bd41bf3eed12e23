"""Zero-shot scene scores from CLIP: no detector class means coral, so the coral expert is gated by how much more an
image looks like "an underwater photo of a coral reef" than like the other scenes people upload."""

from __future__ import annotations

import numpy as np

CORAL_PROMPT = "an underwater photo of a coral reef"
OTHER_SCENES = (
    "a photo of an animal",
    "a photo of people",
    "a photo of a city street",
    "a photo of a landscape",
    "a photo of objects indoors",
)
CLIP_LOGIT_SCALE = 100.0  # CLIP's learned temperature, as in its zero-shot evaluation


def zero_shot_probability(image_vectors: np.ndarray, prompt_vectors: np.ndarray) -> np.ndarray:
    """Probability of the first prompt among all prompts, per image (rows are L2-normalised)."""
    if len(image_vectors) == 0:
        return np.zeros(0, np.float32)
    logits = CLIP_LOGIT_SCALE * image_vectors @ prompt_vectors.T
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return (weights[:, 0] / weights.sum(axis=1)).astype(np.float32)
