"""Did every expert speak with enough confidence? (WARN: a low-confidence label is kept, and flagged for review.)"""

import dagster as dg

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


label_confidence = PerImageCheck(
    asset=dg.AssetKey("specialist_labels"),
    name="labels_confident",
    batch_name="all_labels_confident",
    severity=dg.AssetCheckSeverity.WARN,
    description="Every specialist's top label is at or above that specialist's review threshold; labels under it "
    "are listed for review.",
    record_file=LABELS,
    record_type=LabelsRecord,
    outcome=labels_outcome,
)
labels_confident = label_confidence.definition()
