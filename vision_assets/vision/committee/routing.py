"""Which expert sees which crop: a table from detector class to specialist, and how crops are cut."""

from __future__ import annotations

from collections.abc import Mapping

CORAL = "coral_health"
WILDLIFE_CLASSES = ("bird", "bear", "zebra", "giraffe", "elephant", "horse", "sheep", "cow")
DEFAULT_ROUTES: dict[str, str] = {"dog": "dog_breeds", "cat": "cat_breeds"} | {c: "wildlife" for c in WILDLIFE_CLASSES}


def parse_routes(text: str) -> dict[str, str]:
    """`dog=dog_breeds,cat=cat_breeds,...` -> {"dog": "dog_breeds", ...}."""
    routes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        detector_class, separator, specialist = item.partition("=")
        if not separator or not detector_class.strip() or not specialist.strip():
            raise ValueError(f"a route is `detector class=specialist`, got {item!r}")
        routes[detector_class.strip()] = specialist.strip()
    return routes


def format_routes(routes: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in routes.items())


def crop_box(box: list[float], width: int, height: int, margin: float) -> list[int]:
    """The detection box grown by `margin` of its size on every side (context helps classifiers), clamped to the
    image, and never empty."""
    x1, y1, x2, y2 = box
    grow_x, grow_y = (x2 - x1) * margin, (y2 - y1) * margin
    left = max(0, int(x1 - grow_x))
    top = max(0, int(y1 - grow_y))
    right = min(width, int(round(x2 + grow_x)))
    bottom = min(height, int(round(y2 + grow_y)))
    right = max(right, min(width, left + 1))
    bottom = max(bottom, min(height, top + 1))
    return [left, top, right, bottom]


def box_size(box: list[float]) -> tuple[int, int]:
    x1, y1, x2, y2 = box
    return max(1, round(x2 - x1)), max(1, round(y2 - y1))
