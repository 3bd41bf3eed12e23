"""Scene tags for whole images: CLIP zero-shot over a configurable vocabulary (beach, snow, underwater, indoor,
night, ...). No detector class means coral, so the coral expert is gated by one of these tags: how much an image
looks like a coral reef rather than any other scene in the vocabulary."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..records import SceneTags
from .zero_shot import Vocabulary

CORAL_TAG = "coral reef"
DEFAULT_SCENES: dict[str, str] = {
    "beach": "a photo of a beach",
    "snow": "a photo of a snowy landscape",
    "underwater": "an underwater photo of open water",
    CORAL_TAG: "an underwater photo of a coral reef",
    "forest": "a photo of a forest",
    "field": "a photo of a grassy field",
    "desert": "a photo of a desert",
    "mountains": "a photo of mountains",
    "city": "a photo of a city street",
    "indoor": "a photo taken indoors",
    "night": "a photo taken at night",
}


def parse_scenes(text: str) -> dict[str, str]:
    """`beach, snow=a photo of snow` -> {"beach": "a photo of a beach", "snow": "a photo of snow"}."""
    scenes: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        tag, _, prompt = (part.strip() for part in item.partition("="))
        if not tag:
            raise ValueError(f"a scene is `tag` or `tag=prompt`, got {item!r}")
        scenes[tag] = prompt or f"a photo of a {tag}"
    return scenes


def format_scenes(scenes: Mapping[str, str]) -> str:
    return ",".join(f"{tag}={prompt}" for tag, prompt in scenes.items())


def scene_tags(image_vectors: np.ndarray, vocabulary: Vocabulary, threshold: float, model: str) -> list[SceneTags]:
    scores = vocabulary.scores(image_vectors)
    tagged = []
    for row in scores:
        order = np.argsort(-row)
        tagged.append(SceneTags(
            model=model,
            scores={vocabulary.names[i]: round(float(row[i]), 4) for i in order},
            tags=[vocabulary.names[i] for i in order if row[i] >= threshold],
        ))
    return tagged
