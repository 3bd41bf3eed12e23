"""Does the generalist agree with the committee? (WARN: a crop CLIP contradicts is kept, and flagged for review.)"""

import dagster as dg

from ..vision.records import LabelsRecord
from ..vision.review.decisions import AppliedReview, outstanding_disagreements
from .confidence import LABELS_KEY
from .per_image import ImageOutcome, PerImageCheck


def agreement_outcome(record: LabelsRecord, reviewed: AppliedReview | None = None) -> ImageOutcome:
    """Passed when CLIP agrees, or a person has decided every crop it contradicted ("reviewed by ...")."""
    disagreements = outstanding_disagreements(record, reviewed)
    audited = sum(1 for c in record.crops if c.second_opinion)
    metadata: dict = {"disagreements": disagreements, "crops_audited": audited}
    if reviewed:
        metadata["reviewed"] = reviewed.summary()
    if not disagreements:
        contradicted = len(record.disagreements)
        said = f"{reviewed.summary()} (CLIP had contradicted {contradicted} answer(s))" if reviewed and contradicted \
            else f"CLIP agrees on all {audited} crops"
        return ImageOutcome(record.partition_key, True, said, metadata)
    return ImageOutcome(record.partition_key, False, f"CLIP disagrees on {len(disagreements)} answer(s): "
                        + "; ".join(disagreements), metadata)


committee_agreement = PerImageCheck(
    asset=LABELS_KEY,
    name="committee_agrees",
    batch_name="committee_agreed",
    severity=dg.AssetCheckSeverity.WARN,
    description="CLIP's zero-shot second opinion on each crop, over the detector's classes and over the routed "
    "expert's labels, does not beat the detector's class or the expert's top label by "
    "VISION_ASSETS_SECOND_OPINION_MARGIN or more. Crops it contradicts are kept, flagged `needs_review` with the "
    "reason (\"detector: cat; CLIP: dog 0.81\").",
    not_passed="disagreed",
)
