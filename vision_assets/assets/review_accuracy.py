"""`review_accuracy`: every reviewer decision so far as ground truth: the router's and each expert's precision, and
per expert the lowest review threshold whose trusted labels reach VISION_ASSETS_REVIEW_TARGET_PRECISION."""

import base64

import dagster as dg

from ..keys import REVIEW_ACCURACY, REVIEW_DECISIONS
from ..resources import ImageStore, LabelingSettings, QdrantResource, RefereeResource, ReviewSettings
from ..vision.index import qdrant_models as models
from ..vision.index.vector_index import VectorIndex
from ..vision.records import ImageReview
from ..vision.review.accuracy import REFEREE, measure, plot, png_bytes, report_markdown
from ..vision.storage.results_store import REVIEW


def reviewed_images(index: VectorIndex) -> list[str]:
    """The images a person reviewed, from the index (their image points say `reviewed`): the cost follows the
    reviews, not the catalogue."""
    if not index.client.collection_exists(index.images):
        return []
    found, offset = [], None
    reviewed = models.Filter(must=[models.FieldCondition(key="reviewed", match=models.MatchValue(value=True))])
    while True:
        points, offset = index.client.scroll(index.images, limit=1000, offset=offset, scroll_filter=reviewed,
                                             with_payload=True)
        found += [p.payload["image_id"] for p in points if p.payload]
        if offset is None:
            return sorted(set(found))


@dg.asset(
    key=REVIEW_ACCURACY,
    deps=[REVIEW_DECISIONS],
    group_name="review",
    kinds={"labelstudio"},
    description="Every reviewer decision so far as ground truth: the router's, each expert's and the referee's "
    "(per model version) precision, and per expert the lowest review threshold whose trusted labels reach VISION_ASSETS_REVIEW_TARGET_PRECISION, with "
    "how many reviews it would have asked for. The numbers are metadata, so the UI plots them over time.",
)
def review_accuracy(context: dg.AssetExecutionContext, image_store: ImageStore, qdrant: QdrantResource,
                    labeling: LabelingSettings, review: ReviewSettings, referee: RefereeResource) -> dg.MaterializeResult:
    with qdrant.open(on_wait=context.log.info) as index:
        reviewed = reviewed_images(index)
    reviews = [r for r in (image_store.results.read(key, REVIEW, ImageReview) for key in reviewed) if r]
    router, experts = measure(reviews)
    current = {name: referee.min_probability if name.startswith(REFEREE) else
               labeling.review_thresholds.get(name, labeling.default_review_threshold) for name in experts}
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
        # One plotted series per expert, and per referee version (`referee_precision` for the one configured now).
        key = REFEREE if name == f"{REFEREE} {referee.identity}" else name
        if name.startswith(REFEREE) and key != REFEREE:
            continue  # an earlier referee version: in the table, not plotted
        if model.precision is not None:
            metadata[f"{key}_precision"] = dg.MetadataValue.float(round(model.precision, 4))
        if suggestion := model.suggested_threshold(review.target_precision):
            metadata[f"{key}_suggested_threshold"] = dg.MetadataValue.float(suggestion.threshold)
    context.log.info(f"{len(reviews)} reviewed image(s), {router.judged} judged box(es)")
    return dg.MaterializeResult(metadata=metadata)
