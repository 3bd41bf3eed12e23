"""Did every expert speak with enough confidence? (WARN: a low-confidence label is kept, and flagged for review.)"""

import dagster as dg
from PIL import Image

from ..vision.images.review import ReviewPictures, review_crops_markdown
from ..vision.records import LabelsRecord
from .per_image import ImageOutcome, PerImageCheck

LABELS_KEY = dg.AssetKey("specialist_labels")


def labels_outcome(record: LabelsRecord, picture: Image.Image | None, look: ReviewPictures | None) -> ImageOutcome:
    review = record.needing_review
    metadata: dict = {"needs_review": review, "crops": len(record.crops)}
    if not review:
        return ImageOutcome(record.partition_key, True, "all labels confident", metadata)
    if picture is not None and look is not None:  # the crops themselves, with what their expert said
        metadata["review_crops"] = dg.MetadataValue.md(review_crops_markdown(picture, record, look))
    description = f"needs review, {len(review)} label(s) under threshold: " + "; ".join(review)
    return ImageOutcome(record.partition_key, False, description, metadata)


label_confidence = PerImageCheck(
    asset=LABELS_KEY,
    name="labels_confident",
    batch_name="all_labels_confident",
    severity=dg.AssetCheckSeverity.WARN,
    description="Every specialist's top label is at or above that specialist's review threshold; labels under it "
    "are kept and shown for review.",
    not_passed="need review",
)
