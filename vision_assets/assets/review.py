"""The review loop's assets: `review_decisions` applies a person's verdict on an image (index payloads, the label
checks), `review_accuracy` measures the committee against every verdict so far."""


import base64

import dagster as dg

from ..checks.agreement import agreement_outcome, committee_agreement
from ..checks.confidence import LABELS_KEY, label_confidence, labels_outcome
from ..checks.per_image import rejudge
from ..resources import ImageStore, LabelingSettings, QdrantResource, ReviewSettings, StagePolicy
from ..vision.records import DetectionsRecord, EmbeddingsRecord, ImageReview, LabelsRecord
from ..vision.review.accuracy import measure, plot, png_bytes, report_markdown
from ..vision.review.decisions import apply_review
from ..vision.storage.results_store import DETECTIONS, EMBEDDINGS, LABELS, REVIEW
from .index import write_points
from .stage import ImageMetadata, stage_asset, transient_faults_retried, valid_sources

REVIEW_KEY = dg.AssetKey("review_decisions")
ACCURACY_KEY = dg.AssetKey("review_accuracy")


@dg.asset(
    **stage_asset(
        key=REVIEW_KEY,
        deps=[LABELS_KEY],
        pool="qdrant",
        kinds={"labelstudio", "qdrant"},
        group_name="review",
        description="A person's verdict on an image (`~review.json`, written by `review_sensor` from Label Studio "
        "or our corrections JSON) applied: the image's Qdrant points carry the human labels (`reviewed`, the model's "
        "answer kept under `review`; rejected boxes lose their point) and the image's label checks are judged again, "
        "Passed \"reviewed by ...\" where the person decided everything that was flagged.",
    )
)
@transient_faults_retried
def review_decisions(context: dg.AssetExecutionContext, image_store: ImageStore, qdrant: QdrantResource,
                     stage_policy: StagePolicy):
    results = image_store.results
    valid, skipped = valid_sources(image_store, context.partition_keys)
    metadata = ImageMetadata(context)
    applied, labels_of, embedded = {}, {}, {}
    for key, source in valid.items():
        review = results.read(key, REVIEW, ImageReview)
        detections = results.read(key, DETECTIONS, DetectionsRecord)
        labels_of[key] = results.read(key, LABELS, LabelsRecord)
        embedded[key] = results.read(key, EMBEDDINGS, EmbeddingsRecord)
        if review is None or detections is None or labels_of[key] is None or embedded[key] is None:
            skipped[key] = "no review for this image" if review is None else "not processed yet: no labels to review"
            continue
        applied[key] = apply_review(review, source.sha256, detections)
        if applied[key] is None:
            skipped[key] = f"the review by {review.reviewer} was made on other content (sha256 {review.sha256[:12]})"
            continue
        metadata.add(key, {"status": "applied", "reviewer": review.reviewer, "origin": review.origin,
                           "reviewed_at": review.reviewed_at.isoformat(), "summary": applied[key].summary(),
                           "decisions": [d.model_dump(mode="json", exclude_none=True) for d in review.boxes],
                           "no_longer_found": len(applied[key].unmatched)})
    for key in skipped:
        applied.pop(key, None)
    metadata.skipped(skipped)
    keys = list(applied)
    if keys:
        with qdrant.open(on_wait=context.log.info) as index:
            for chunk in stage_policy.chunks(keys):
                _, _, written = write_points(index, results, valid, embedded, chunk, qdrant.upsert_batch_size)
                for record in written:
                    if record.problems:
                        context.log.warning(f"{record.partition_key}: the index does not hold what the review "
                                            f"should have written: {record.problems}")
    yield metadata.materialize()
    # The label checks belong to specialist_labels: judged again against its latest materialization of each image.
    for check, outcomes in (
        (label_confidence, [labels_outcome(labels_of[k], None, None, applied[k]) for k in keys]),
        (committee_agreement, [agreement_outcome(labels_of[k], applied[k]) for k in keys]),
    ):
        if unjudged := rejudge(context, check, outcomes):
            context.log.warning(f"{check.name}: no materialization of specialist_labels to judge for {unjudged}")


@dg.asset(
    key=ACCURACY_KEY,
    deps=[REVIEW_KEY],
    group_name="review",
    kinds={"labelstudio"},
    description="Every reviewer decision so far as ground truth: the router's and each expert's precision, and per "
    "expert the lowest review threshold whose trusted labels reach VISION_ASSETS_REVIEW_TARGET_PRECISION, with "
    "how many reviews it would have asked for. The numbers are metadata, so the UI plots them over time.",
)
def review_accuracy(context: dg.AssetExecutionContext, image_store: ImageStore, labeling: LabelingSettings,
                    review: ReviewSettings) -> dg.MaterializeResult:
    # Only images with a review: their partitions of review_decisions (the cost follows the reviews, not the
    # catalogue).
    reviewed = sorted(context.instance.get_materialized_partitions(REVIEW_KEY))
    reviews = [r for r in (image_store.results.read(key, REVIEW, ImageReview) for key in reviewed) if r]
    router, experts = measure(reviews)
    current = {name: labeling.review_thresholds.get(name, labeling.default_review_threshold) for name in experts}
    chart = base64.b64encode(png_bytes(plot([router, *experts.values()]))).decode("ascii")
    metadata: dict = {
        "reviewed_images": len(reviews),
        "judged_boxes": router.judged,
        "missed_boxes": router.missed,
        "router_precision": dg.MetadataValue.float(round(router.precision, 4)) if router.precision is not None
        else "no reviews yet",
        "accuracy": dg.MetadataValue.md(report_markdown(router, experts, current, review.target_precision)),
        "plot": dg.MetadataValue.md(f"![precision and review share by threshold](data:image/png;base64,{chart})"),
    }
    for name, model in experts.items():
        if model.precision is not None:
            metadata[f"{name}_precision"] = dg.MetadataValue.float(round(model.precision, 4))
        if suggestion := model.suggested_threshold(review.target_precision):
            metadata[f"{name}_suggested_threshold"] = dg.MetadataValue.float(suggestion.threshold)
    context.log.info(f"{len(reviews)} reviewed image(s), {router.judged} judged box(es)")
    return dg.MaterializeResult(metadata=metadata)
