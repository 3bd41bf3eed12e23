"""An image's points, from what the earlier stages wrote and what a reviewer decided: what `qdrant_index`, `reindex`
and `review_decisions` write. No model: the index can always be rebuilt from the results store."""

from __future__ import annotations

from dataclasses import dataclass

from ..records import (
    DetectionsRecord,
    EmbeddingsRecord,
    ImageReview,
    IndexRecord,
    LabelsRecord,
    SourceImageRecord,
)
from ..review.decisions import apply_review
from ..storage.overlap import each_image, together
from ..storage.results_store import DETECTIONS, EMBEDDING_VECTORS, EMBEDDINGS, INDEX, REVIEW, ResultsStore
from .payloads import crop_payload, image_payload
from .vector_index import ImagePoints, VectorIndex, crop_point_id, image_point_id


@dataclass(frozen=True)
class StoredResults:
    """What the earlier stages and a reviewer stored for an image: what its points are made of."""

    embedded: EmbeddingsRecord | None
    detections: DetectionsRecord | None
    labels: LabelsRecord | None
    vectors: dict | None
    review: ImageReview | None
    earlier: IndexRecord | None  # what its last indexing wrote


def read_stored(results: ResultsStore, key: str) -> StoredResults:
    """An image's stored results, read at once (each a round trip); the labels with the referee's opinions."""
    return StoredResults(*together(
        lambda: results.read(key, EMBEDDINGS, EmbeddingsRecord), lambda: results.read(key, DETECTIONS, DetectionsRecord),
        lambda: results.read_labels(key), lambda: results.read_arrays(key, EMBEDDING_VECTORS),
        lambda: results.read(key, REVIEW, ImageReview), lambda: results.read(key, INDEX, IndexRecord)))


def stored_points(source: SourceImageRecord, stored: StoredResults) -> ImagePoints:
    """One image's points (a reviewer's answers replace the model's where they still apply, and a box they rejected
    has no point), from its stored results, whose embeddings are sound."""
    key, embedded, detections, labels = source.partition_key, stored.embedded, stored.detections, stored.labels
    reviewed = apply_review(stored.review, source.sha256, detections)
    crops = {c.detection_index: c for c in labels.crops}
    kept = [row for row, i in enumerate(embedded.crop_indexes) if not (reviewed and reviewed.rejected(i))]
    return ImagePoints(
        partition_key=key,
        image_vector=stored.vectors["image"],
        image_payload=image_payload(source, detections, labels, embedded, reviewed),
        crop_vectors=stored.vectors["crops"][kept],
        crop_payloads=[crop_payload(source, crops[embedded.crop_indexes[row]], detections.model, embedded.model,
                                    reviewed) for row in kept],
        crop_indexes=[embedded.crop_indexes[row] for row in kept],
        earlier_crop_ids=(stored.earlier.crop_points if stored.earlier else [])
        + [crop_point_id(key, index) for index in range(len(detections.detections))],
    )


def index_points(index: VectorIndex, points: list[ImagePoints], batch_size: int) -> list[IndexRecord]:
    """Write these images' points, check the index holds exactly them, and say what was written: per image, its
    points and the problems found (what `~index.json` records)."""
    index.ensure_collections(int(points[0].image_vector.shape[0]), points[0].image_payload["embedding_model"])
    index.upsert(points, batch_size=batch_size)
    problems = index.consistency_problems(points)
    return [IndexRecord(partition_key=image.partition_key, image_point=image_point_id(image.partition_key),
                        crop_points=image.crop_ids, problems=problems[image.partition_key]) for image in points]


def write_points(index: VectorIndex, results: ResultsStore, sources: dict[str, SourceImageRecord],
                 keys: list[str], batch_size: int) -> list[IndexRecord]:
    """`index_points` for these images (whose embeddings are sound) from their stored results, and what was
    written recorded (`~index.json`)."""
    points = each_image(lambda key: stored_points(sources[key], read_stored(results, key)), keys)
    records = index_points(index, points, batch_size)
    each_image(lambda record: results.write(record.partition_key, INDEX, record), records)
    return records
