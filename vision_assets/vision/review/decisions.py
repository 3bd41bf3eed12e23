"""Where a person's decisions still hold, and what they change.

A review is tied to the pixels it was made on: it applies while the image's content (sha256) is the one reviewed,
so a re-upload of the same bytes keeps it and a different photo under the same key does not. Within that, each
decision is matched to a box of the current detections by overlap, not by index, so a new router model that finds
the same objects in a different order, or with slightly different boxes, keeps the human answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..records import BoxDecision, DetectionsRecord, ImageReview, LabelsRecord, Verdict

SAME_OBJECT_IOU = 0.5  # a box overlapping a reviewed box this much is the object the reviewer judged


def iou(a: list[float], b: list[float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class AppliedReview:
    """A review as it bears on the current results of an image."""

    review: ImageReview
    by_detection: dict[int, BoxDecision] = field(default_factory=dict)  # current detection index -> decision
    added: list[BoxDecision] = field(default_factory=list)
    unmatched: list[BoxDecision] = field(default_factory=list)  # judged boxes the current router no longer finds

    @property
    def reviewer(self) -> str:
        return self.review.reviewer

    def decision(self, detection_index: int) -> BoxDecision | None:
        return self.by_detection.get(detection_index)

    def rejected(self, detection_index: int) -> bool:
        decision = self.by_detection.get(detection_index)
        return decision is not None and decision.verdict == Verdict.REJECTED

    def summary(self) -> str:
        """`reviewed by ana: 2 accepted, 1 corrected` for a check's description."""
        counts: dict[str, int] = {}
        for decision in [*self.by_detection.values(), *self.added]:
            counts[decision.verdict.value] = counts.get(decision.verdict.value, 0) + 1
        said = ", ".join(f"{n} {verdict}" for verdict, n in counts.items()) or "nothing left to decide"
        return f"reviewed by {self.reviewer}: {said}"


def apply_review(review: ImageReview | None, sha256: str | None,
                 detections: DetectionsRecord) -> AppliedReview | None:
    """The review's decisions matched to the current detections; None when there is no review or it was made on
    other content. Each judged box takes the current detection it overlaps most (at least SAME_OBJECT_IOU), each
    detection at most one decision."""
    if review is None or (review.sha256 and sha256 and review.sha256 != sha256):
        return None
    applied = AppliedReview(review)
    judged = [d for d in review.boxes if d.verdict != Verdict.ADDED]
    applied.added = [d for d in review.boxes if d.verdict == Verdict.ADDED]
    pairs = sorted(((iou(d.model_box or d.box, det.box), n, i) for n, d in enumerate(judged)
                    for i, det in enumerate(detections.detections)), reverse=True)
    taken_decisions: set[int] = set()
    for overlap, n, index in pairs:
        if overlap < SAME_OBJECT_IOU:
            break
        if n in taken_decisions or index in applied.by_detection:
            continue
        applied.by_detection[index] = judged[n]
        taken_decisions.add(n)
    applied.unmatched = [d for n, d in enumerate(judged) if n not in taken_decisions]
    return applied


def outstanding_review(record: LabelsRecord, applied: AppliedReview | None) -> list[str]:
    """`record.needing_review` less what a person has decided (a decided crop needs no more review) and what the
    referee settled (where the record was read with its opinions)."""
    if applied is None:
        return record.needing_review
    crops = [f"crop {c.detection_index} ({c.detection.class_name}): {c.specialist.under_threshold}"
             for c in record.crops
             if c.specialist and c.specialist.needs_review and not c.settled_by_referee
             and applied.decision(c.detection_index) is None]
    scene = [f"scene ({s.specialist}): {s.under_threshold}" for s in record.scene if s.needs_review]
    return record.model_errors + crops + scene


def outstanding_disagreements(record: LabelsRecord, applied: AppliedReview | None) -> list[str]:
    """`record.disagreements` less the crops a person has decided."""
    return [f"crop {c.detection_index}: {reason}" for c in record.crops if c.second_opinion
            and not c.settled_by_referee and (applied is None or applied.decision(c.detection_index) is None)
            for reason in c.second_opinion.disagreements]
