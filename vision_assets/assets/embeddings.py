"""`embeddings`: OpenCLIP vectors for every valid image and every crop."""

import time

import dagster as dg
import numpy as np

from ..checks.confidence import LABELS_KEY
from ..checks.embedding import EMBEDDINGS_KEY, embedding_outcome, embedding_validity
from ..resources import EmbedderResource, ImageStore, StagePolicy
from ..vision.committee.embedding_checks import embedding_problems
from ..vision.records import EmbeddingsRecord, LabelsRecord
from ..vision.results_store import EMBEDDING_VECTORS, EMBEDDINGS, LABELS
from .stage import load_images, note_skipped, stage_asset, transient_faults_retried, valid_sources


def build_embeddings(embedder_identity: str) -> dg.AssetsDefinition:
    @dg.asset(
        **stage_asset(
            key=EMBEDDINGS_KEY,
            deps=[LABELS_KEY],
            pool="gpu",
            kinds={"pytorch"},
            code_version=f"1|{embedder_identity}",
            check_specs=embedding_validity.specs,
            description=f"L2-normalised OpenCLIP ({embedder_identity}) embeddings of each valid image and each of "
            "its crops. Writes `~embeddings.npz` and `~embeddings.json`.",
        )
    )
    @transient_faults_retried
    def embeddings(
        context: dg.AssetExecutionContext, image_store: ImageStore, embedder: EmbedderResource, stage_policy: StagePolicy
    ):
        valid, skipped = valid_sources(image_store, context.partition_keys)
        note_skipped(context, skipped)
        results, clip = image_store.results, embedder.embedder
        records, crop_count, seconds = [], 0, 0.0
        for chunk in stage_policy.chunks(list(valid)):
            labels = {key: results.read(key, LABELS, LabelsRecord) for key in chunk}
            pictures = load_images(image_store, chunk)
            crops = [(key, c.detection_index, pictures[key].crop(tuple(c.crop_box)))
                     for key in chunk for c in labels[key].crops]
            started = time.perf_counter()
            # One batched pass over the chunk's whole images and one over all their crops.
            image_vectors = clip.embed_images([pictures[k] for k in chunk])
            crop_vectors = clip.embed_images([image for _, _, image in crops]) if crops else None
            seconds += time.perf_counter() - started
            crop_count += len(crops)
            dimension = clip.dimension
            rows_of: dict[str, list[int]] = {key: [] for key in chunk}
            for row, (owner, _, _) in enumerate(crops):
                rows_of[owner].append(row)
            for row, key in enumerate(chunk):
                mine = rows_of[key]
                vectors = crop_vectors[mine] if mine else np.zeros((0, dimension), np.float32)
                record = EmbeddingsRecord(
                    partition_key=key, model=embedder.identity, dimension=dimension,
                    crop_indexes=[crops[i][1] for i in mine],
                    problems=embedding_problems(image_vectors[row], dimension, "image")
                    + embedding_problems(vectors, dimension, "crops"),
                )
                results.write_arrays(key, EMBEDDING_VECTORS, image=image_vectors[row], crops=vectors)
                results.write(key, EMBEDDINGS, record)
                records.append(record)
                context.add_asset_metadata(
                    {"status": "done", "crops": len(mine), "dimension": dimension, "model": embedder.identity},
                    partition_key=key,
                )
        yield dg.MaterializeResult()
        yield from embedding_validity.report(
            context, [embedding_outcome(record) for record in records], skipped,
            batch_crops=crop_count,
            batch_model_seconds=round(seconds, 3),
            batch_vectors_per_second=round((len(records) + crop_count) / seconds, 2) if seconds else 0.0,
            models_loaded=embedder.load_counts,
        )

    return embeddings
