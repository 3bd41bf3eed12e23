"""An image's points, from what the earlier stages wrote and what a reviewer decided: what `qdrant_index`, `reindex`
and `review_decisions` write. No model: the index can always be rebuilt from the results store."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from ..records import (
    DetectionsRecord,
    EmbeddingsRecord,
    ImageReview,
    IndexRecord,
    LabelsRecord,
    SourceImageRecord,
)
from ..review.decisions import apply_review
from ..storage.results_store import DETECTIONS, EMBEDDING_VECTORS, INDEX, LABELS, REVIEW, ResultsStore
from .payloads import crop_payload, image_payload
from .vector_index import ImagePoints, VectorIndex, crop_point_id, image_point_id

READ_THREADS = 16  # an image's stored results are a few reads: many images' round trips at once


def stored_points(results: ResultsStore, source: SourceImageRecord, embedded: EmbeddingsRecord) -> tuple[ImagePoints, LabelsRecord]:
    """One image's points (a reviewer's answers replace the model's where they still apply, and a box they rejected
    has no point), and its labels."""
    key = source.partition_key
    detections = results.read(key, DETECTIONS, DetectionsRecord)
    labels = results.read(key, LABELS, LabelsRecord)
    vectors = results.read_arrays(key, EMBEDDING_VECTORS)
    reviewed = apply_review(results.read(key, REVIEW, ImageReview), source.sha256, detections)
    crops = {c.detection_index: c for c in labels.crops}
    kept = [row for row, i in enumerate(embedded.crop_indexes) if not (reviewed and reviewed.rejected(i))]
    earlier = results.read(key, INDEX, IndexRecord)
    points = ImagePoints(
        partition_key=key,
        image_vector=vectors["image"],
        image_payload=image_payload(source, detections, labels, embedded, reviewed),
        crop_vectors=vectors["crops"][kept],
        crop_payloads=[crop_payload(source, crops[embedded.crop_indexes[row]], detections.model, embedded.model,
                                    reviewed) for row in kept],
        crop_indexes=[embedded.crop_indexes[row] for row in kept],
        earlier_crop_ids=(earlier.crop_points if earlier else [])
        + [crop_point_id(key, index) for index in range(len(detections.detections))],
    )
    return points, labels


def write_points(index: VectorIndex, results: ResultsStore, sources: dict[str, SourceImageRecord],
                 embedded: dict[str, EmbeddingsRecord], keys: list[str], batch_size: int,
                 ) -> tuple[list[ImagePoints], dict[str, LabelsRecord], list[IndexRecord]]:
    """Write these images' points from their stored results, check the index holds exactly them, and record what
    was written (`~index.json`): per image, its points and the problems found."""
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:  # a few store reads each: their round trips overlap
        read = list(pool.map(lambda key: stored_points(results, sources[key], embedded[key]), keys))
    points = [image for image, _ in read]
    labels_of = {image.partition_key: labels for image, labels in read}
    index.ensure_collections(int(points[0].image_vector.shape[0]), points[0].image_payload["embedding_model"])
    index.upsert(points, batch_size=batch_size)
    problems = index.consistency_problems(points)
    records = [IndexRecord(partition_key=image.partition_key, image_point=image_point_id(image.partition_key),
                           crop_points=image.crop_ids, problems=problems[image.partition_key]) for image in points]
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        list(pool.map(lambda record: results.write(record.partition_key, INDEX, record), records))
    return points, labels_of, records
