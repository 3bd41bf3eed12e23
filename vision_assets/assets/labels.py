"""`specialist_labels`: each crop to the expert for its class; reef-looking images to the coral expert."""

import time
from collections import Counter

import dagster as dg
from PIL import Image

from ..checks.confidence import LABELS_KEY, label_confidence, labels_outcome
from ..resources import (
    EmbedderResource,
    ImageStore,
    LabelingSettings,
    ReviewSettings,
    SpecialistsResource,
    StagePolicy,
)
from ..vision.images.review import ReviewPictures, labels_markdown
from ..vision.committee.labeling import label_batch
from ..vision.records import DetectionsRecord, LabelsRecord
from ..vision.results_store import DETECTIONS, LABELS
from ..vision.committee.routing import CORAL
from ..vision.committee.scenes import CORAL_PROMPT, OTHER_SCENES, zero_shot_probability
from .detections import DETECTIONS_KEY
from .stage import load_images, note_skipped, stage_asset, transient_faults_retried, valid_sources


def labels_metadata(record: LabelsRecord, picture: Image.Image, look: ReviewPictures | None) -> dict:
    top = Counter(c.specialist.top.name for c in record.crops if c.specialist)
    metadata = {
        "status": "done",
        "crops": len(record.crops),
        "labels": dict(top),
        "coral_scene_score": round(record.coral_scene_score, 4) if record.coral_scene_score is not None else "",
        "needs_review": len(record.needing_review),
    }
    if look:  # what the committee saw, drawn on the image
        metadata["picture"] = dg.MetadataValue.md(labels_markdown(record.partition_key, picture, record, look))
    return metadata


def build_specialist_labels(specialists_identity: str, embedder_identity: str) -> dg.AssetsDefinition:
    @dg.asset(
        **stage_asset(
            key=LABELS_KEY,
            deps=[DETECTIONS_KEY],
            pool="gpu",
            kinds={"pytorch"},
            code_version=f"1|{specialists_identity}|{embedder_identity}",
            check_specs=label_confidence.specs,
            description="Every detection cropped (with a margin) and labelled by the expert for its class, top-k "
            "with confidences; whole images that CLIP scores as a coral reef labelled by the coral expert. Writes "
            "`~labels.json`.",
        )
    )
    @transient_faults_retried
    def specialist_labels(
        context: dg.AssetExecutionContext,
        image_store: ImageStore,
        specialists: SpecialistsResource,
        embedder: EmbedderResource,
        labeling: LabelingSettings,
        review: ReviewSettings,
        stage_policy: StagePolicy,
    ):
        valid, skipped = valid_sources(image_store, context.partition_keys)
        note_skipped(context, skipped)
        results, look = image_store.results, review.look
        experts = specialists.classifiers()
        scene_prompts = embedder.embedder.embed_texts([CORAL_PROMPT, *OTHER_SCENES]) if CORAL in experts and valid else None
        seconds, outcomes, routed, coral_images = 0.0, [], Counter(), 0
        for chunk in stage_policy.chunks(list(valid)):
            detections = {key: results.read(key, DETECTIONS, DetectionsRecord) for key in chunk}
            pictures = load_images(image_store, chunk)
            started = time.perf_counter()
            coral_scores = {}
            if scene_prompts is not None:
                scores = zero_shot_probability(embedder.embedder.embed_images([pictures[k] for k in chunk]), scene_prompts)
                coral_scores = {key: float(score) for key, score in zip(chunk, scores, strict=True)}
            labelled = label_batch(pictures, detections, experts, coral_scores, labeling.policy)
            seconds += time.perf_counter() - started
            for key in chunk:
                record = labelled[key]
                results.write(key, LABELS, record)
                context.add_asset_metadata(labels_metadata(record, pictures[key], look), partition_key=key)
                outcomes.append(labels_outcome(record, pictures[key], look))
            routed.update(c.specialist.specialist for r in labelled.values() for c in r.crops if c.specialist)
            coral_images += sum(bool(r.scene) for r in labelled.values())
        yield dg.MaterializeResult()
        yield from label_confidence.report(
            context, outcomes, skipped,
            batch_crops_per_specialist=dict(routed),
            batch_model_seconds=round(seconds, 3),
            batch_coral_images=coral_images,
            models_loaded=specialists.load_counts | embedder.load_counts,
        )

    return specialist_labels
