"""`embeddings`: the generalist's look at everything, once. OpenCLIP vectors for every valid image and every crop the
router found, and each image's scene tags (zero-shot over the scene vocabulary, from the same image vector). The
experts come after it, so the coral gate and the second opinions reuse these vectors instead of embedding again.
Its check, `embeddings_valid` (ERROR): an image with bad vectors is not indexed."""

import functools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg
import numpy as np

from ..keys import DETECTIONS, EMBEDDINGS, GPU_POOL
from ..resources import (
    EmbedderResource,
    ImageSelection,
    ImageStore,
    LabelingSettings,
    SpecialistsResource,
    StagePolicy,
)
from ..vision.committee.embedding_checks import embedding_problems
from ..vision.committee.expert_sides import ExpertSides
from ..vision.committee.routing import box_size, crop_box
from ..vision.committee.scenes import scene_tags
from ..vision.committee.zero_shot import Vocabulary
from ..vision.images.crops import pack_crops
from ..vision.images.working import WorkingPicture, scale_for_short_sides
from ..vision.models.device_time import DeviceTime, batch_device_seconds
from ..vision.models.failures import ModelFailure, answer_each
from ..vision.models.inputs import shrink_to_cover
from ..vision.records import DetectionsRecord, EmbeddingsRecord, SourceImageRecord
from ..vision.reuse import reusable, version_of
from ..vision.storage.overlap import BackgroundWrites
from ..vision.storage.results_store import DETECTIONS as DETECTIONS_FILE
from ..vision.storage.results_store import EMBEDDING_VECTORS, ResultsStore
from ..vision.storage.results_store import EMBEDDINGS as EMBEDDINGS_FILE
from .batch_checks import BatchCheck, ImageOutcome
from .stage import (
    BatchMetadata,
    batch_counts,
    judged_from_record,
    read_ahead,
    reused_in,
    run_images,
    stage_asset,
    step_start,
    transient_faults_retried,
)

embedding_validity = BatchCheck(
    asset=EMBEDDINGS,
    name="embeddings_valid",
    severity=dg.AssetCheckSeverity.ERROR,
    description="Image and crop embeddings have the model's dimension, are finite and unit length.",
    not_passed="failed",
)


def embedding_outcome(record: EmbeddingsRecord) -> ImageOutcome:
    return ImageOutcome(
        record.partition_key,
        passed=not record.problems,
        description="; ".join(record.problems) or f"{1 + len(record.crop_indexes)} vectors, {record.dimension}-d, unit norm",
        facts={"crops": len(record.crop_indexes)},
    )


def embeddings_writes(results: ResultsStore, record: EmbeddingsRecord, arrays: dict) -> list[Callable[[], None]]:
    """An image's two files, written at once (the chunk is finished, and recorded so, once both are)."""
    return [functools.partial(results.write_arrays, record.partition_key, EMBEDDING_VECTORS, **arrays),
            functools.partial(results.write, record.partition_key, EMBEDDINGS_FILE, record)]


@dataclass(frozen=True)
class Reused:
    """An image's embeddings copied from an image with the same bytes (vision/reuse.py)."""

    record: EmbeddingsRecord
    arrays: dict


def rows_or_zeros(answers: list, dimension: int) -> np.ndarray:
    """The vectors of `answer_each`'s answers, a zero row where the model failed (the record says so)."""
    rows = [np.zeros(dimension, np.float32) if isinstance(a, ModelFailure) else a for a in answers]
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, dimension), np.float32)


def build_embeddings(embedder_identity: str, scene_signature: str) -> dg.AssetsDefinition:
    @dg.asset(
        **stage_asset(
            key=EMBEDDINGS,
            deps=[DETECTIONS],
            pool=GPU_POOL,
            kinds={"pytorch"},
            code_version=f"2|{embedder_identity}|{scene_signature}",
            check_specs=[embedding_validity.spec],
            description=f"L2-normalised OpenCLIP ({embedder_identity}) embeddings of each valid image and of each "
            "detection's crop (the box plus a margin: the crops the experts then see), and each image's scene tags "
            "(CLIP zero-shot over the scene vocabulary). Writes `~embeddings.npz` and `~embeddings.json`.",
        )
    )
    @transient_faults_retried
    def embeddings(
        context: dg.AssetExecutionContext,
        image_store: ImageStore,
        embedder: EmbedderResource,
        specialists: SpecialistsResource,
        labeling: LabelingSettings,
        stage_policy: StagePolicy,
        image_selection: ImageSelection,
    ):
        results, clip, model = image_store.results, embedder.embedder, embedder.identity
        taken = run_images(context, results, image_selection)
        records, crop_count, seconds, tag_counts = [], 0, 0.0, Counter()
        progress, resumed, done, skipped, todo = step_start(context, results, taken, "embeddings")
        clock, reused = DeviceTime(), set()
        clip_side = functools.cache(lambda: clip.input_side)  # asked once a picture needs CLIP
        experts = ExpertSides(specialists.classifiers(), labeling.routes)
        scenes: Vocabulary | None = None  # the scene prompts' vectors, once there is an image to tag

        def crops_of(found: DetectionsRecord) -> tuple[list[list[int]], list[int]]:
            """Each detection's crop box, and the side it is cut at: CLIP's or its expert's, whichever is larger
            (the experts get these very pixels)."""
            return ([crop_box(d.box, found.width, found.height, labeling.crop_margin) for d in found.detections],
                    [max(clip_side(), experts.for_class(d.class_name)) for d in found.detections])

        version = version_of(model, labeling.signature, specialists.identity)

        def read_inputs(image: str, source: SourceImageRecord, found: DetectionsRecord,
                        ) -> tuple[DetectionsRecord, WorkingPicture] | Reused:
            # The same bytes embedded before, from the same boxes, by this CLIP: its vectors and crops, no model.
            if found.reused_from and (copy := reusable(results, found.reused_from, EMBEDDINGS_FILE, EmbeddingsRecord,
                                                       version, image)):
                arrays = results.read_arrays(found.reused_from, EMBEDDING_VECTORS)
                if arrays is not None:
                    return Reused(copy, arrays)
            # Each picture decoded only as large as its crops need (the model input ingest wrote, if enough).
            boxes, crop_sides = crops_of(found)
            scale = scale_for_short_sides([((found.width, found.height), clip_side())] + [
                (box_size(box), crop_side) for box, crop_side in zip(boxes, crop_sides, strict=True)])
            return found, results.read_working(image, scale, source)

        with BackgroundWrites() as writes:
            for read in read_ahead(results, taken, todo, stage_policy.chunk_size, read_inputs,
                                   alongside=lambda image: results.read(image, DETECTIONS_FILE, DetectionsRecord)):
                skipped |= read.skipped
                copies = [found for found in read.inputs.values() if isinstance(found, Reused)]
                reused |= {copy.record.partition_key for copy in copies}
                chunk = [key for key, found in read.inputs.items() if not isinstance(found, Reused)]
                records += [copy.record for copy in copies]
                done |= {copy.record.partition_key for copy in copies}
                copied = [write for copy in copies for write in embeddings_writes(results, copy.record, copy.arrays)]
                if not chunk:  # none of these goes further, or no model is needed for them
                    writes.submit(copied, then=progress.after_writing([*read.inputs, *read.skipped]))
                    continue
                if scenes is None:
                    scenes = Vocabulary(list(labeling.scenes), clip.prompt_vectors(list(labeling.scenes.values())))
                detections = {key: read.inputs[key][0] for key in chunk}
                pictures = {key: read.inputs[key][1] for key in chunk}
                cut = {key: crops_of(found) for key, found in detections.items()}
                crops = [(key, index, box, shrink_to_cover(pictures[key].crop(box), cut[key][1][index]))
                         for key in chunk for index, box in enumerate(cut[key][0])]  # (image, detection, box, pixels)
                started = time.perf_counter()
                # One batched pass over the chunk's whole images and one over all their crops; a picture CLIP raises on
                # fails alone (its image is not indexed, and `embeddings_valid` says why).
                image_answers = clock.timed("clip", clip, chunk, answer_each, clip.embed_images,
                                            [pictures[k].image for k in chunk])
                crop_answers = clock.timed("clip", clip, [key for key, *_ in crops], answer_each, clip.embed_images,
                                           [pixels for *_, pixels in crops])
                dimension = clip.dimension
                image_vectors, crop_vectors = rows_or_zeros(image_answers, dimension), rows_or_zeros(crop_answers, dimension)
                tags = scene_tags(image_vectors, scenes, labeling.scene_tag_threshold, model)
                seconds += time.perf_counter() - started
                crop_count += len(crops)
                failures = {key: [f"the detector failed on this image: {detections[key].error}"]
                            if detections[key].error else [] for key in chunk}
                for key, answer in zip(chunk, image_answers, strict=True):
                    if isinstance(answer, ModelFailure):
                        failures[key].append(f"CLIP failed on the image: {answer.error}")
                for (key, index, *_), answer in zip(crops, crop_answers, strict=True):
                    if isinstance(answer, ModelFailure):
                        failures[key].append(f"CLIP failed on crop {index}: {answer.error}")
                rows_of: dict[str, list[int]] = {key: [] for key in chunk}
                for row, (owner, *_) in enumerate(crops):
                    rows_of[owner].append(row)
                written = []
                for row, key in enumerate(chunk):
                    mine = rows_of[key]
                    vectors = crop_vectors[mine]
                    record = EmbeddingsRecord(
                        partition_key=key, model=model, dimension=dimension,
                        crop_indexes=[crops[i][1] for i in mine], crop_boxes=[crops[i][2] for i in mine],
                        scene=tags[row],
                        problems=failures[key] or (embedding_problems(image_vectors[row], dimension, "image")
                                                   + embedding_problems(vectors, dimension, "crops")),
                        device_seconds=clock.of(key), version=version,
                    )
                    written.append((record, {"image": image_vectors[row], "crops": vectors,
                                             **pack_crops([crops[i][3] for i in mine])}))
                    records.append(record)
                    tag_counts.update(record.scene.tags)
                done |= set(chunk)
                writes.submit([write for item in written for write in embeddings_writes(results, *item)] + copied,
                              then=progress.after_writing([*read.inputs, *read.skipped]))
        metadata = BatchMetadata(context)
        run_figures = {"model": model, "run_crops": crop_count, "run_scene_tags": dict(tag_counts),
                       "run_model_seconds": round(seconds, 3),
                       "run_vectors_per_second": round((len(records) + crop_count) / seconds, 2) if seconds else 0.0,
                       "models_loaded": embedder.load_counts, "run_images_resumed": len(resumed)}
        spent = batch_device_seconds(clock.by_image.items(), taken.batch_of)
        for batch, counts in batch_counts(taken, done, skipped).items():
            metadata.add(batch, counts | run_figures | {"device_seconds": spent.get(batch, {}),
                                                        "images_reused": reused_in(taken, reused, batch)})
        progress.clear()
        yield metadata.materialize()
        yield from embedding_validity.report(
            context, taken, {r.partition_key: embedding_outcome(r) for r in records}, skipped,
            judged_from_record(results, EMBEDDINGS_FILE, EmbeddingsRecord, embedding_outcome,
                               "not embedded yet: materialize embeddings"))

    return embeddings
