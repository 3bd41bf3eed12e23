"""What needs a person now, read from the index's `needs_review` payloads: counts by reason and the most doubtful
images of a bounded sample. Its cost follows the sample, not the catalogue (counts are payload-indexed filters)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..index import qdrant_models as models
from ..index.vector_index import VectorIndex

SAMPLE_POINTS = 500  # flagged crops read to choose the most doubtful images among


def _flag(key: str, value: bool) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


@dataclass(frozen=True)
class QueuedImage:
    image_id: str
    batch: str | None
    lowest_confidence: float
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReviewQueue:
    counts: dict[str, int]
    top: list[QueuedImage]


def review_queue(index: VectorIndex, top: int) -> ReviewQueue:
    if not index.client.collection_exists(index.crops):
        return ReviewQueue({}, [])
    open_review = [_flag("needs_review", True), _flag("reviewed", False)]
    count = lambda collection, *must: index.client.count(
        collection, count_filter=models.Filter(must=list(must)), exact=True).count
    counts = {
        "images_needing_review": count(index.images, _flag("needs_review", True)),
        "crops_needing_review": count(index.crops, *open_review),
        "crops_clip_disagrees": count(index.crops, *open_review, _flag("clip_disagrees", True)),
        "crops_reviewed": count(index.crops, _flag("reviewed", True)),
    }
    counts["crops_only_under_threshold"] = count(index.crops, *open_review, _flag("clip_disagrees", False))
    points, _ = index.client.scroll(index.crops, limit=SAMPLE_POINTS,
                                    scroll_filter=models.Filter(must=open_review), with_payload=True)
    by_image: dict[str, QueuedImage] = {}
    for point in points:
        payload = point.payload or {}
        image = payload.get("image_id")
        confidence = float(payload.get("label_confidence", payload.get("confidence", 1.0)) or 0.0)
        known = by_image.get(image)
        reasons = (known.reasons if known else []) + list(payload.get("review_reasons") or [])
        lowest = min(confidence, known.lowest_confidence) if known else confidence
        by_image[image] = QueuedImage(image, payload.get("batch"), lowest, reasons)
    ranked = sorted(by_image.values(), key=lambda q: (q.lowest_confidence, q.image_id))
    return ReviewQueue(counts, ranked[:top])
