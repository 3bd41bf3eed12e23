"""`specialist_labels`: each crop to the expert for its class; reef-looking images to the coral expert; and CLIP's
second opinion on every crop, from the vectors the embeddings stage already computed. Its checks (WARN: a doubtful
label is kept, flagged `needs_review`): `labels_confident` (every expert at or above its threshold, or a person
decided) and `committee_agrees` (CLIP does not contradict the detector or the expert, or a person decided)."""

import functools
import time
from collections import Counter
from dataclasses import dataclass

import dagster as dg
import numpy as np
from PIL import Image

from ..keys import EMBEDDINGS, GPU_POOL, SPECIALIST_LABELS
from ..resources import (
    DetectorResource,
    EmbedderResource,
    ImageSelection,
    ImageStore,
    LabelingSettings,
    ReviewSettings,
    SpecialistsResource,
    StagePolicy,
)
from ..vision.committee.expert_sides import ExpertSides
from ..vision.committee.labeling import LabelingPolicy, label_batch
from ..vision.committee.routing import CORAL, box_size
from ..vision.committee.second_opinion import second_opinions
from ..vision.committee.vocabularies import Vocabularies
from ..vision.images.crops import unpack_crops
from ..vision.images.review import ReviewPictures, review_crops_markdown
from ..vision.images.working import WorkingPicture, scale_for_long_side, scale_for_short_sides
from ..vision.models.device_time import DeviceTime, batch_device_seconds
from ..vision.records import (
    DetectionsRecord,
    EmbeddingsRecord,
    ImageReview,
    LabelsRecord,
    RefereeRecord,
    SourceImageRecord,
)
from ..vision.reuse import reusable, version_of
from ..vision.review.decisions import (
    AppliedReview,
    apply_review,
    outstanding_disagreements,
    outstanding_review,
)
from ..vision.review.label_studio import task_for
from ..vision.storage.overlap import BackgroundWrites, together
from ..vision.storage.results_store import (
    DETECTIONS,
    EMBEDDING_VECTORS,
    LABELS,
    NORMALIZED_IMAGE,
    REFEREE,
    REVIEW,
    ResultsStore,
)
from ..vision.storage.results_store import EMBEDDINGS as EMBEDDINGS_FILE
from .batch_checks import BatchCheck, ImageOutcome
from .stage import (
    BatchMetadata,
    Skip,
    batch_counts,
    read_ahead,
    reused_in,
    run_images,
    source_state,
    stage_asset,
    step_start,
    transient_faults_retried,
)


@dataclass(frozen=True)
class LabelInputs:
    """What the stage reads of an image besides its source record."""

    embedded: EmbeddingsRecord
    detections: DetectionsRecord
    vectors: dict[str, np.ndarray] | None
    boxes: dict[int, list[int]]  # detection index -> the crop box the embeddings stage cut
    handed: dict[int, Image.Image] | None  # detection index -> those crops' pixels, where the record kept them
    coral_score: float | None
    picture: WorkingPicture
    earlier_review: ImageReview | None


@dataclass(frozen=True)
class ReusedLabels:
    """An image's labels copied from an image with the same bytes (vision/reuse.py), with what the stage reads of it
    besides."""

    record: LabelsRecord
    detections: DetectionsRecord
    earlier_review: ImageReview | None


label_confidence = BatchCheck(
    asset=SPECIALIST_LABELS,
    name="labels_confident",
    severity=dg.AssetCheckSeverity.WARN,
    description="Every specialist's top label is at or above that specialist's review threshold, or a person decided "
    "it; labels under it are kept, flagged for review and shown (the crops with each expert's top labels).",
    not_passed="need review",
)

committee_agreement = BatchCheck(
    asset=SPECIALIST_LABELS,
    name="committee_agrees",
    severity=dg.AssetCheckSeverity.WARN,
    description="CLIP's zero-shot second opinion on each crop, over the detector's classes and over the routed "
    "expert's labels, does not beat the detector's class or the expert's top label by "
    "VISION_ASSETS_SECOND_OPINION_MARGIN or more (or a person decided). Crops it contradicts are kept, flagged "
    "`needs_review` with the reason (\"detector: cat; CLIP: dog 0.81\").",
    not_passed="disagreed",
)


def labels_outcome(record: LabelsRecord, picture: WorkingPicture | None, look: ReviewPictures | None,
                   reviewed: AppliedReview | None = None, crops: dict[int, Image.Image] | None = None) -> ImageOutcome:
    """Passed when every label is confident or a person has decided it ("reviewed by ...")."""
    review = outstanding_review(record, reviewed)
    facts = {"crops": len(record.crops), "reviewed": int(reviewed is not None)}
    if not review:
        flagged = len(record.needing_review)
        said = f"{reviewed.summary()} ({flagged} label(s) had been under threshold)" if reviewed and flagged else (
            "all labels confident")
        return ImageOutcome(record.partition_key, True, said, facts=facts)
    shown = review_crops_markdown(picture, record, look, crops) if picture is not None and look is not None else None
    description = f"needs review, {len(review)} label(s) under threshold: " + "; ".join(review)
    return ImageOutcome(record.partition_key, False, description, picture=shown, facts=facts)


def agreement_outcome(record: LabelsRecord, reviewed: AppliedReview | None = None) -> ImageOutcome:
    """Passed when CLIP agrees, or a person has decided every crop it contradicted ("reviewed by ...")."""
    disagreements = outstanding_disagreements(record, reviewed)
    audited = sum(1 for c in record.crops if c.second_opinion)
    facts = {"crops_audited": audited}
    if not disagreements:
        contradicted = len(record.disagreements)
        said = f"{reviewed.summary()} (CLIP had contradicted {contradicted} answer(s))" if reviewed and contradicted \
            else f"CLIP agrees on all {audited} crops"
        return ImageOutcome(record.partition_key, True, said, facts=facts)
    return ImageOutcome(record.partition_key, False, f"CLIP disagrees on {len(disagreements)} answer(s): "
                        + "; ".join(disagreements), facts=facts)


def stored_labels(results: ResultsStore):
    """Judges for both checks from an image's stored labels and its review (where it still applies). Both judge the
    same images, so each image's records are read once for the two."""
    @functools.cache
    def read(image: str, batch: str) -> tuple[LabelsRecord, AppliedReview | None] | str:
        why, source = source_state(results, image, batch)
        if why:
            return why
        labels = results.read(image, LABELS, LabelsRecord)
        detections = results.read(image, DETECTIONS, DetectionsRecord)
        if labels is None or detections is None:
            return "not labelled yet: materialize specialist_labels"
        return labels, apply_review(results.read(image, REVIEW, ImageReview), source.sha256, detections)

    def confidence(image: str, batch: str) -> ImageOutcome | str:
        found = read(image, batch)
        return found if isinstance(found, str) else labels_outcome(found[0], None, None, found[1])

    def agreement(image: str, batch: str) -> ImageOutcome | str:
        found = read(image, batch)
        return found if isinstance(found, str) else agreement_outcome(*found)

    return confidence, agreement


def build_specialist_labels(specialists_identity: str, embedder_identity: str) -> dg.AssetsDefinition:
    @dg.asset(
        **stage_asset(
            key=SPECIALIST_LABELS,
            deps=[EMBEDDINGS],
            pool=GPU_POOL,
            kinds={"pytorch"},
            code_version=f"2|{specialists_identity}|{embedder_identity}",
            check_specs=[label_confidence.spec, committee_agreement.spec],
            description="Every crop the embeddings stage cut labelled by the expert for its class, top-k with "
            "confidences; whole images whose `coral reef` scene tag passes the gate labelled by the coral expert; "
            "and CLIP's zero-shot second opinion on each crop (detector class and expert label), from the stored "
            "crop vectors. Writes `~labels.json`, and a Label Studio task for each image a person should look at.",
        )
    )
    @transient_faults_retried
    def specialist_labels(
        context: dg.AssetExecutionContext,
        image_store: ImageStore,
        specialists: SpecialistsResource,
        embedder: EmbedderResource,
        detector: DetectorResource,
        labeling: LabelingSettings,
        review: ReviewSettings,
        stage_policy: StagePolicy,
        image_selection: ImageSelection,
    ):
        results, look = image_store.results, review.look
        taken = run_images(context, results, image_selection)
        progress, resumed, done, skipped, todo = step_start(context, results, taken, "specialist_labels")
        clock, reused = DeviceTime(), set()
        experts = specialists.classifiers()
        vocabularies = Vocabularies(lambda: embedder.embedder, lambda: detector.detector.class_names, experts)
        seconds, audit_seconds, outcomes, agreements = 0.0, 0.0, {}, {}
        routed, coral_images, audited, tasks = Counter(), 0, 0, []
        sides = ExpertSides(experts, labeling.routes)

        def stored(image: str) -> tuple:
            return together(lambda: results.read(image, EMBEDDINGS_FILE, EmbeddingsRecord),
                            lambda: results.read(image, DETECTIONS, DetectionsRecord),
                            lambda: results.read_arrays(image, EMBEDDING_VECTORS),
                            lambda: results.read(image, REVIEW, ImageReview))

        version = version_of(specialists.identity, specialists.top_k, sorted(specialists.drop_labels),
                             embedder.identity, labeling.signature)

        def read_inputs(image: str, source: SourceImageRecord, earlier: tuple) -> LabelInputs | ReusedLabels | Skip:
            embedded, found, vectors, earlier_review = earlier
            if embedded is None:
                return Skip("no embeddings: materialize embeddings first")
            # The same bytes labelled before, from the same boxes and vectors, by these experts: no picture, no model.
            if found is not None and found.reused_from and embedded.reused_from == found.reused_from and (
                    copy := reusable(results, found.reused_from, LABELS, LabelsRecord, version, image)):
                return ReusedLabels(copy, found, earlier_review)
            boxes = dict(zip(embedded.crop_indexes, embedded.crop_boxes, strict=True))
            # The crops the embeddings stage cut, at the experts' sides: the pixels CLIP embedded, not decoded again.
            crops = unpack_crops(vectors)
            handed = dict(zip(embedded.crop_indexes, crops, strict=True)) if crops is not None else None
            coral = embedded.scene.scores.get(labeling.coral_scene_tag, 0.0) if embedded.scene else None
            scale = decode_scale(sides, found, boxes, set(handed or {}), coral, labeling.policy, look)
            return LabelInputs(embedded, found, vectors, boxes, handed, coral, results.read_working(image, scale, source),
                               earlier_review)

        with BackgroundWrites() as writes:
            for read in read_ahead(results, taken, todo, stage_policy.chunk_size, read_inputs, alongside=stored):
                skipped |= read.skipped
                inputs = read.inputs
                copies = {key: found for key, found in inputs.items() if isinstance(found, ReusedLabels)}
                chunk = [key for key in inputs if key not in copies]
                reused |= set(copies)
                finished_in_chunk = [*inputs, *read.skipped]
                if not inputs:
                    writes.submit([], then=progress.after_writing(finished_in_chunk))
                    continue
                detections = {key: inputs[key].detections for key in inputs}
                embedded = {key: inputs[key].embedded for key in chunk}
                vectors = {key: inputs[key].vectors for key in chunk}
                handed = {key: inputs[key].handed for key in chunk if inputs[key].handed is not None}
                pictures = {key: inputs[key].picture for key in chunk}
                labelled = {key: found.record for key, found in copies.items()}
                if chunk:
                    started = time.perf_counter()
                    labelled |= label_batch(pictures, detections, {key: inputs[key].boxes for key in chunk}, experts,
                                            {key: inputs[key].coral_score for key in chunk
                                             if inputs[key].coral_score is not None}, labeling.policy, handed, clock)
                    seconds += time.perf_counter() - started
                    crops, crop_seconds = _second_opinions({key: labelled[key] for key in chunk}, embedded, vectors,
                                                           vocabularies, embedder.identity,
                                                           labeling.second_opinion_margin)
                    audited, audit_seconds = audited + crops, audit_seconds + crop_seconds
                finished = []
                for key in inputs:
                    record, source = labelled[key], read.sources[key]
                    record.version = record.version or version
                    # A person's earlier decisions, where they still apply (same content, same objects).
                    reviewed = apply_review(inputs[key].earlier_review, source.sha256, detections[key])
                    outcomes[key] = labels_outcome(record, pictures.get(key), look, reviewed, handed.get(key))
                    agreements[key] = agreement_outcome(record, reviewed)
                    finished.append((source, detections[key], record, reviewed,
                                     review.sampled(key) if review.tasks else None))
                routed.update(c.specialist.specialist for key in chunk for c in labelled[key].crops if c.specialist)
                coral_images += sum(bool(labelled[key].scene) for key in chunk)
                done |= set(inputs)

                def recorded(with_task: list[bool], finished: list[str] = finished_in_chunk) -> None:
                    tasks.append(sum(with_task))
                    progress.record(finished)

                writes.submit([functools.partial(write_labels, results, *item) for item in finished], then=recorded)
        metadata = BatchMetadata(context)
        run_figures = {"run_crops_per_specialist": dict(routed), "run_model_seconds": round(seconds, 3),
                       "run_coral_images": coral_images, "run_review_tasks": sum(tasks),
                       "run_crops_audited": audited, "run_second_opinion_seconds": round(audit_seconds, 3),
                       "run_ms_per_crop": round(1000 * audit_seconds / audited, 3) if audited else 0.0,
                       "models_loaded": specialists.load_counts | embedder.load_counts,
                       "run_images_resumed": len(resumed)}
        spent = batch_device_seconds(clock.by_image.items(), taken.batch_of)
        for batch, counts in batch_counts(taken, done, skipped).items():
            metadata.add(batch, counts | run_figures | {"device_seconds": spent.get(batch, {}),
                                                        "images_reused": reused_in(taken, reused, batch)})
        progress.clear()
        yield metadata.materialize()
        confidence, agreement = stored_labels(results)
        yield from label_confidence.report(context, taken, outcomes, skipped, confidence)
        yield from committee_agreement.report(context, taken, agreements, skipped, agreement,
                                              margin=labeling.second_opinion_margin)

    return specialist_labels


def write_labels(results: ResultsStore, source: SourceImageRecord, detections: DetectionsRecord, record: LabelsRecord,
                 reviewed: AppliedReview | None, sampled: bool | None) -> bool:
    """The image's labels written, and its review task written or removed (`sampled` None: no review tasks);
    whether it has a task. The task honours the referee's opinions that still apply to these labels (it runs after
    this stage, and writes the task again, but this stage can be run alone)."""
    results.write(source.partition_key, LABELS, record)
    if sampled is None:
        return False
    refereed = record.refereed(results.read(source.partition_key, REFEREE, RefereeRecord))
    return export_review_task(results, source, detections, refereed, reviewed, sampled)


def decode_scale(sides: ExpertSides, detections: DetectionsRecord, boxes: dict[int, list[int]], handed: set[int],
                 coral_score: float | None, policy: LabelingPolicy, look: ReviewPictures | None) -> float:
    """The scale an image is decoded at for this stage: each crop routed to an expert and not handed over by the
    embeddings stage gets that expert's side, a whole image past the coral gate the coral expert's, and the review
    pictures their thumbnail side (the model input ingest wrote serves those two)."""
    size = (detections.width, detections.height)
    needs = [(box_size(boxes[index]), side) for index, detection in enumerate(detections.detections)
             if index in boxes and index not in handed and (side := sides.for_class(detection.class_name))]
    if CORAL in sides.experts and coral_score is not None and coral_score >= policy.coral_scene_threshold:
        needs.append((size, sides.side(CORAL)))
    return max(scale_for_short_sides(needs), scale_for_long_side(size, look.side) if look else 0.0)


def export_review_task(results: ResultsStore, source: SourceImageRecord, detections: DetectionsRecord,
                       record: LabelsRecord, reviewed: AppliedReview | None, sampled: bool) -> bool:
    """Write the image's Label Studio task when a person should look (a label under threshold or a CLIP
    disagreement nobody decided yet; or the confident sample, unless already reviewed), else remove any old one."""
    reasons = outstanding_review(record, reviewed) + outstanding_disagreements(record, reviewed)
    if not reasons and not (sampled and reviewed is None and detections.detections):
        results.remove_review_task(source.partition_key)
        return False
    uri = results.reviewer_uri(source.partition_key, NORMALIZED_IMAGE)
    results.write_review_task(source.partition_key, task_for(source, detections, record, uri, reasons))
    return True


def _second_opinions(labelled: dict[str, LabelsRecord], embedded: dict[str, EmbeddingsRecord], vectors: dict,
                     vocabularies: Vocabularies, model: str, margin: float) -> tuple[int, float]:
    """CLIP's opinion on every crop of the chunk whose vector is sound: (crops judged, seconds the judging took, not
    counting the one-off prompt vectors)."""
    crops, rows = [], []
    for key, record in labelled.items():
        if embedded[key].problems:  # vectors that failed their check say nothing
            continue
        row_of = {index: row for row, index in enumerate(embedded[key].crop_indexes)}
        for crop in record.crops:
            if crop.detection_index in row_of:
                crops.append(crop)
                rows.append(vectors[key]["crops"][row_of[crop.detection_index]])
    if not crops:
        return 0, 0.0
    detector = vocabularies.detector
    experts = vocabularies.experts(crops)
    started = time.perf_counter()
    second_opinions(crops, np.stack(rows), detector, experts, model, margin)
    return len(crops), time.perf_counter() - started
