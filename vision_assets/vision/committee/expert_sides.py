"""The side (pixels) each expert reads a crop at, asked of each expert once: what the embeddings stage cuts the crops at
for the experts, and what the experts' stage decodes a picture at for what was not handed over."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ExpertSides:
    def __init__(self, experts: Mapping[str, Any], routes: Mapping[str, str]):
        self.experts, self.routes = experts, routes
        self._sides: dict[str, int] = {}

    def side(self, expert: str) -> int:
        if expert not in self._sides:
            self._sides[expert] = self.experts[expert].input_side
        return self._sides[expert]

    def for_class(self, class_name: str) -> int:
        """The side the expert for a detector class reads (0: no expert for it)."""
        expert = self.routes.get(class_name)
        return self.side(expert) if expert in self.experts else 0
