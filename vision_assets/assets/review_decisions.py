"""`review_decisions`: people's verdicts applied in bulk. One run takes every image whose `~review.json` a
`review_sensor` tick wrote (as many as it read), rewrites their Qdrant points (the human labels, `reviewed`, the
model's answer kept under `review`; rejected boxes lose their point) and judges their batches' label checks again,
Passed "reviewed by ..." where the person decided everything that was flagged."""

import time
from collections import defaultdict

import dagster as dg

from ..keys import REVIEW_DECISIONS, SPECIALIST_LABELS
from ..resources import ImageStore, QdrantResource, StagePolicy
from ..vision.chunking import chunked
from ..vision.index.stored_points import write_points
from ..vision.records import DetectionsRecord, EmbeddingsRecord, ImageReview
from ..vision.review.decisions import apply_review
from ..vision.storage.batch_lookup import BatchLookup
from ..vision.storage.overlap import each_image, together
from ..vision.storage.results_store import DETECTIONS, EMBEDDINGS, REVIEW
from .specialist_labels import committee_agreement, label_confidence, stored_labels
from .stage import transient_faults_retried

# Between two chunks the step lets go of the embedded index for longer than a waiting run polls (0.1 s), so an
# upload run's `qdrant_index` gets its turn during a long review run instead of after it.
CHUNK_IMAGES = 256
YIELD_SECONDS = 0.3


class ApplyReviewsConfig(dg.Config):
    images: list[str] = []  # image ids whose `~review.json` is to be applied (review_sensor fills it)


@dg.asset(
    key=REVIEW_DECISIONS,
    deps=[SPECIALIST_LABELS],
    group_name="review",
    kinds={"labelstudio", "qdrant"},
    description="Reviewers' verdicts (`~review.json`, written by `review_sensor` from Label Studio or our "
    "corrections JSON) applied in bulk: the images' Qdrant points carry the human labels and their batches' "
    "`labels_confident` and `committee_agrees` are judged again. One run per sensor tick, however many images.",
)
@transient_faults_retried
def review_decisions(context: dg.AssetExecutionContext, config: ApplyReviewsConfig, image_store: ImageStore,
                     qdrant: QdrantResource, stage_policy: StagePolicy):
    results = image_store.results
    started = time.perf_counter()
    applied, sources, skipped = {}, {}, {}
    images = list(dict.fromkeys(config.images))
    read = each_image(lambda image: together(
        lambda: results.read_source_record(image), lambda: results.read(image, REVIEW, ImageReview),
        lambda: results.read(image, DETECTIONS, DetectionsRecord),
        lambda: results.read(image, EMBEDDINGS, EmbeddingsRecord), lambda: results.read_labels(image)),
        images)
    for image, (source, review, detections, embedded, labels) in zip(images, read, strict=True):
        if review is None:
            skipped[image] = "no review for this image"
        elif source is None or not source.is_valid or detections is None or embedded is None or labels is None:
            skipped[image] = "not processed (or rejected): no labels to review"
        elif (found := apply_review(review, source.sha256, detections)) is None:
            skipped[image] = f"the review by {review.reviewer} was made on other content (sha256 {review.sha256[:12]})"
        else:
            applied[image], sources[image] = found, source
    keys = list(applied)
    problems = 0
    for number, chunk in enumerate(chunked(keys, CHUNK_IMAGES)):
        if number:
            time.sleep(YIELD_SECONDS)
        with qdrant.open(on_wait=context.log.info) as index:
            written = write_points(index, results, sources, chunk, qdrant.upsert_batch_size)
        for record in written:
            if record.problems:
                problems += 1
                context.log.warning(f"{record.partition_key}: the index does not hold what the review should have "
                                    f"written: {record.problems}")
    seconds = time.perf_counter() - started
    # The label checks belong to specialist_labels: each touched batch judged again, every image of it.
    touched = batches_of(results, sources.values())
    confidence, agreement = stored_labels(results)
    for check, judge in ((label_confidence, confidence), (committee_agreement, agreement)):
        if unjudged := check.rejudge(context, touched, judge):
            context.log.warning(f"{check.name}: no materialization of specialist_labels to judge for {unjudged}")
    if skipped:
        context.log.info(f"{len(skipped)} review(s) not applied: " + "; ".join(
            f"{image}: {why}" for image, why in list(skipped.items())[:10]))
    context.log.info(f"applied {len(keys)} review(s) in {seconds:.1f}s across {len(touched)} batch(es)")
    reviewers = defaultdict(int)
    for found in applied.values():
        reviewers[found.reviewer] += 1
    yield dg.MaterializeResult(metadata={
        "applied": len(keys), "not_applied": len(skipped), "batches": len(touched), "index_problems": problems,
        "seconds": round(seconds, 3), "reviewers": dict(reviewers),
        "not_applied_examples": dg.MetadataValue.md("\n".join(
            ["| image | why |", "|---|---|", *[f"| `{i}` | {w} |" for i, w in list(skipped.items())[:50]]])),
    })


def batches_of(results, sources) -> dict[str, list[str]]:
    """batch -> every image of its manifest, for the batches these images belong to."""
    lookup = BatchLookup(results)
    wanted = sorted(filter(None, {lookup.batch_of(source.partition_key, source) for source in sources}))
    manifests = results.read_manifests(wanted)
    return {batch: manifest.images for batch, manifest in manifests.items() if manifest}
