"""Did every expert speak with enough confidence? (WARN: a low-confidence label is kept, and flagged for review.)"""

import dagster as dg
from PIL import Image

from ..vision.images.review import ReviewPictures, review_crops_markdown
from ..vision.records import LabelsRecord
from ..vision.review.decisions import AppliedReview, outstanding_review
from .per_image import ImageOutcome, PerImageCheck

LABELS_KEY = dg.AssetKey("specialist_labels")


def labels_outcome(record: LabelsRecord, picture: Image.Image | None, look: ReviewPictures | None,
                   reviewed: AppliedReview | None = None) -> ImageOutcome:
    """Passed when every label is confident or a person has decided it ("reviewed by ...")."""
    review = outstanding_review(record, reviewed)
    metadata: dict = {"needs_review": review, "crops": len(record.crops)}
    if reviewed:
        metadata["reviewed"] = reviewed.summary()
    if not review:
        flagged = len(record.needing_review)
        said = f"{reviewed.summary()} ({flagged} label(s) had been under threshold)" if reviewed and flagged else (
            "all labels confident")
        return ImageOutcome(record.partition_key, True, said, metadata)
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
