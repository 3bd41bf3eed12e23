"""`qdrant_index`: every valid image and crop upserted into Qdrant; rejected images' old points removed."""

import time

import dagster as dg

from ..checks.embedding import EMBEDDINGS_KEY
from ..checks.indexing import INDEX_KEY, index_consistency, index_outcome
from ..resources import CallbackSettings, ImageStore, QdrantResource
from ..vision.callback import Outbox, finished_message
from ..vision.index.vector_index import ImagePoints, image_point_id
from ..vision.index.payloads import crop_payload, image_payload
from ..vision.records import DetectionsRecord, EmbeddingsRecord, IndexRecord, LabelsRecord
from ..vision.results_store import DETECTIONS, EMBEDDING_VECTORS, EMBEDDINGS, INDEX, LABELS
from .stage import note_skipped, stage_asset, valid_sources


def build_qdrant_index(embedder_identity: str) -> dg.AssetsDefinition:
    @dg.asset(
        **stage_asset(
            key=INDEX_KEY,
            deps=[EMBEDDINGS_KEY],
            pool="qdrant",
            kinds={"qdrant"},
            code_version=f"1|{embedder_identity}",
            check_specs=index_consistency.specs,
            description="Points in the `images` and `crops` collections (cosine), ids derived from the image and "
            "crop identity so re-runs overwrite; payload: source URI, sha256, pHash, box, labels with confidences "
            "and model ids.",
        )
    )
    def qdrant_index(
        context: dg.AssetExecutionContext, image_store: ImageStore, qdrant: QdrantResource, callback: CallbackSettings
    ):
        valid, skipped = valid_sources(image_store, context.partition_keys)
        results = image_store.results
        embedded = {key: results.read(key, EMBEDDINGS, EmbeddingsRecord) for key in valid}
        bad = {key: "; ".join(r.problems) if r else "no embeddings record"
               for key, r in embedded.items() if r is None or r.problems}
        skipped |= {key: f"embeddings failed their check: {why}" for key, why in bad.items()}
        note_skipped(context, skipped)
        points, labels_of = [], {}
        for key, source in valid.items():
            if key in bad:
                continue
            detections = results.read(key, DETECTIONS, DetectionsRecord)
            labels = labels_of[key] = results.read(key, LABELS, LabelsRecord)
            vectors = results.read_arrays(key, EMBEDDING_VECTORS)
            record = embedded[key]
            crops = {c.detection_index: c for c in labels.crops}
            points.append(ImagePoints(
                partition_key=key,
                image_vector=vectors["image"],
                image_payload=image_payload(source, detections, labels, record.model),
                crop_vectors=vectors["crops"],
                crop_payloads=[crop_payload(source, crops[i], detections.model, record.model) for i in record.crop_indexes],
                crop_indexes=record.crop_indexes,
            ))
        started = time.perf_counter()
        records = []
        with qdrant.open() as index:
            if points:
                index.ensure_collections(int(points[0].image_vector.shape[0]), points[0].image_payload["embedding_model"])
            index.upsert(points, batch_size=qdrant.upsert_batch_size)
            for key in skipped:  # a re-upload that is now rejected must not stay findable under its old content
                index.delete_image(key)
            for image in points:
                record = IndexRecord(partition_key=image.partition_key, image_point=image_point_id(image.partition_key),
                                     crop_points=image.crop_ids, problems=index.consistency_problems(image))
                results.write(image.partition_key, INDEX, record)
                records.append(record)
                context.add_asset_metadata({"status": "done", "image_point": record.image_point,
                                            "crop_points": len(record.crop_points)}, partition_key=image.partition_key)
        seconds = time.perf_counter() - started
        if callback.enabled:  # these images are finished; the callback sensor announces them
            outbox = Outbox(results)
            for image, record in zip(points, records, strict=True):
                outbox.add(finished_message(valid[image.partition_key], image.image_payload["top_labels"],
                                            labels_of[image.partition_key].needing_review, record.problems))
            for key, why in bad.items():
                outbox.add(finished_message(valid[key], [], [], [why], failed_check="embedding_valid"))
        yield dg.MaterializeResult()
        yield from index_consistency.report(
            context, [index_outcome(record) for record in records], skipped,
            batch_crops=sum(len(p.crop_indexes) for p in points),
            batch_seconds=round(seconds, 3),
            qdrant=qdrant.url or f"embedded at {qdrant.path}",
        )

    return qdrant_index
