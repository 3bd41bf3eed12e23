"""Did every expert speak with enough confidence? (WARN: a low-confidence label is kept, and flagged for review.)"""

import dagster as dg

from ..resources import ImageStore
from ..vision.records import LabelsRecord
from ..vision.results_store import LABELS
from .per_image import ImageOutcome, PerImageCheck


def labels_outcome(record: LabelsRecord) -> ImageOutcome:
    review = record.needing_review
    return ImageOutcome(
        record.partition_key,
        passed=not review,
        description=f"{len(review)} label(s) need review: " + "; ".join(review) if review else "all labels confident",
        metadata={"needs_review": review, "crops": len(record.crops)},
    )


def _stored(image_store: ImageStore, partition_key: str) -> ImageOutcome | None:
    record = image_store.results.read(partition_key, LABELS, LabelsRecord)
    return labels_outcome(record) if record else None


label_confidence = PerImageCheck(
    asset=dg.AssetKey("specialist_labels"),
    name="labels_confident",
    batch_name="all_labels_confident",
    severity=dg.AssetCheckSeverity.WARN,
    description="Every specialist's top label is at or above that specialist's review threshold; labels under it "
    "are listed for review.",
    stored_outcome=_stored,
)
labels_confident = label_confidence.definition()
