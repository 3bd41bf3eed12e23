"""`qdrant_index`: every valid image and crop upserted into Qdrant; rejected images' old points removed; and the
index audited against what the pipeline indexed before. It reads only what earlier stages stored, never a model,
which is why the `reindex` job is this asset alone."""

import time

import dagster as dg

from ..checks.confidence import LABELS_KEY
from ..checks.embedding import EMBEDDINGS_KEY
from ..checks.indexing import (
    INDEX_KEY,
    completeness_result,
    index_completeness,
    index_consistency,
    index_outcome,
    sampled_indexed,
)
from ..resources import CallbackSettings, ImageStore, QdrantResource, StagePolicy
from ..vision.callback import Outbox, finished_message
from ..vision.index.audit import audit_index
from ..vision.index.payloads import crop_payload, image_payload
from ..vision.index.vector_index import ImagePoints, VectorIndex, crop_point_id, image_point_id
from ..vision.records import (
    DetectionsRecord,
    EmbeddingsRecord,
    ImageReview,
    IndexRecord,
    LabelsRecord,
    SourceImageRecord,
)
from ..vision.review.decisions import apply_review
from ..vision.storage.results_store import (
    DETECTIONS,
    EMBEDDING_VECTORS,
    EMBEDDINGS,
    INDEX,
    LABELS,
    REVIEW,
    ResultsStore,
)
from .stage import ImageMetadata, stage_asset, transient_faults_retried, valid_sources

REINDEX_TAG = "vision_assets/reindex"  # runs that only rebuild the index: nothing new to announce


def stored_points(results: ResultsStore, source: SourceImageRecord, embedded: EmbeddingsRecord) -> tuple[ImagePoints, LabelsRecord]:
    """One image's points, from what the earlier stages wrote and what a reviewer decided (where it still applies:
    their answers replace the model's, and a box they rejected has no point)."""
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
    points, labels_of = [], {}
    for key in keys:
        image, labels_of[key] = stored_points(results, sources[key], embedded[key])
        points.append(image)
    index.ensure_collections(int(points[0].image_vector.shape[0]), points[0].image_payload["embedding_model"])
    index.upsert(points, batch_size=batch_size)
    problems = index.consistency_problems(points)
    records = []
    for image in points:
        key = image.partition_key
        record = IndexRecord(partition_key=key, image_point=image_point_id(key), crop_points=image.crop_ids,
                             problems=problems[key])
        results.write(key, INDEX, record)
        records.append(record)
    return points, labels_of, records


def build_qdrant_index(embedder_identity: str) -> dg.AssetsDefinition:
    @dg.asset(
        **stage_asset(
            key=INDEX_KEY,
            deps=[EMBEDDINGS_KEY, LABELS_KEY],
            pool="qdrant",
            kinds={"qdrant"},
            code_version=f"2|{embedder_identity}",
            check_specs=[*index_consistency.specs, index_completeness],
            description="Points in the `images` and `crops` collections (cosine), ids derived from the image and "
            "crop identity so re-runs overwrite; payload: source URI, sha256, pHash, box, labels with confidences "
            "and model ids. Reads only stored results (no model): the `reindex` job rebuilds the index with it.",
        )
    )
    @transient_faults_retried
    def qdrant_index(
        context: dg.AssetExecutionContext,
        image_store: ImageStore,
        qdrant: QdrantResource,
        callback: CallbackSettings,
        stage_policy: StagePolicy,
    ):
        valid, skipped = valid_sources(image_store, context.partition_keys)
        results = image_store.results
        embedded = {key: results.read(key, EMBEDDINGS, EmbeddingsRecord) for key in valid}
        bad = {key: "; ".join(r.problems) if r else "no embeddings record"
               for key, r in embedded.items() if r is None or r.problems}
        skipped |= {key: f"embeddings failed their check: {why}" for key, why in bad.items()}
        metadata = ImageMetadata(context)
        metadata.skipped(skipped)
        outbox = Outbox(results) if callback.enabled and context.run.tags.get(REINDEX_TAG) != "true" else None
        # What the pipeline indexed before this run, by its checks, sampled: the index must still hold it.
        earlier, registered = sampled_indexed(context.instance, set(context.partition_keys), seed=context.run.run_id)
        started = time.perf_counter()
        records, crop_count = [], 0
        with qdrant.open(on_wait=context.log.info) as index:
            for chunk in stage_policy.chunks([key for key in valid if key not in bad]):
                points, labels_of, written = write_points(index, results, valid, embedded, chunk,
                                                          qdrant.upsert_batch_size)
                for image, record in zip(points, written, strict=True):
                    key = image.partition_key
                    records.append(record)
                    metadata.add(key, {"status": "done", "image_point": record.image_point,
                                       "crop_points": len(record.crop_points)})
                    if outbox:  # finished: the callback sensor announces it
                        outbox.add(finished_message(valid[key], image.image_payload["top_labels"],
                                                    labels_of[key].needing_review, record.problems,
                                                    disagreements=labels_of[key].disagreements))
                crop_count += sum(len(p.crop_indexes) for p in points)
            # A re-upload that is now rejected must not stay findable under its old content: its points go, by the
            # ids its last indexing recorded.
            recorded = [results.read(key, INDEX, IndexRecord) for key in skipped]
            index.delete_points(list(skipped), [p for record in recorded if record for p in record.crop_points])
            audit = audit_index(index, earlier, registered)
        seconds = time.perf_counter() - started
        if outbox:
            for key, why in bad.items():
                outbox.add(finished_message(valid[key], [], [], [why], failed_check="embedding_valid"))
        yield metadata.materialize()
        yield from index_consistency.report(
            context, [index_outcome(record) for record in records], skipped,
            batch_crops=crop_count,
            batch_seconds=round(seconds, 3),
            qdrant=qdrant.where,
        )
        if index_completeness.key in context.selected_asset_check_keys:
            yield completeness_result(audit, qdrant.where)

    return qdrant_index
