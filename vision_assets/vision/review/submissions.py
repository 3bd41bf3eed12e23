"""A reviewer's answer, whichever tool it came from, turned into decisions about the boxes the model drew.

Label Studio says what the final picture should look like (regions kept, changed, deleted, drawn); our own
corrections JSON says verdicts outright. Both become a `Submission`, which `build_review` matches against the
image's stored detections and labels, recording what the model had said beside what the person decided: the
decisions are the ground truth that `accuracy.py` measures the committee against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from ..records import CLASS, LABEL, BoxDecision, CropLabels, DetectionsRecord, ImageReview, LabelsRecord, Verdict
from .decisions import iou

UNCHANGED_BOX_IOU = 0.9  # a reviewer's nudge smaller than this is the same box


class SubmissionError(ValueError):
    """A review file that cannot be applied; the message says what is wrong with it, for the person who wrote it."""


@dataclass
class Submitted:
    detection_index: int | None  # the model's box it is about; None: a box the reviewer drew
    removed: bool = False
    box_percent: list[float] | None = None  # the reviewer's box as [x, y, width, height] percent of the image
    box: list[float] | None = None  # or as [x1, y1, x2, y2] pixels of the normalised image
    entity: str | None = None
    label: str | None = None
    verdict: Verdict | None = None  # said outright (our JSON) or inferred (Label Studio)


@dataclass
class Submission:
    partition_key: str
    reviewer: str
    reviewed_at: datetime
    origin: str
    items: list[Submitted] = field(default_factory=list)


def build_review(submission: Submission, sha256: str | None, detections: DetectionsRecord,
                 labels: LabelsRecord | None) -> ImageReview:
    crops = {c.detection_index: c for c in labels.crops} if labels else {}
    boxes = []
    for item in submission.items:
        box = _pixels(item, detections)
        if item.detection_index is None:
            if box is None or not item.entity:
                raise SubmissionError("an added box needs a box and a class")
            boxes.append(BoxDecision(verdict=Verdict.ADDED, box=box, entity=item.entity, label=item.label,
                                     reviewer=submission.reviewer))
            continue
        if not 0 <= item.detection_index < len(detections.detections):
            raise SubmissionError(f"box {item.detection_index} does not exist: the image has "
                                  f"{len(detections.detections)} detection(s) (was it processed again since?)")
        detection = detections.detections[item.detection_index]
        crop = crops.get(item.detection_index)
        expert = crop.specialist if crop else None
        model_label = expert.top.name if expert else None
        verdict = item.verdict or _inferred(item, box, detection.box, detection.class_name, model_label)
        boxes.append(BoxDecision(
            verdict=verdict, box=box or detection.box, model_box=detection.box,
            entity=None if verdict == Verdict.REJECTED else item.entity or detection.class_name,
            label=None if verdict == Verdict.REJECTED else item.label or model_label,
            model_entity=detection.class_name, model_label=model_label,
            model_confidence=expert.top.confidence if expert else None,
            detector_confidence=detection.confidence, specialist=expert.specialist if expert else None,
            reviewer=submission.reviewer, **_referee_said(crop),
        ))
    return ImageReview(partition_key=submission.partition_key, sha256=sha256, reviewer=submission.reviewer,
                       reviewed_at=submission.reviewed_at, origin=submission.origin, boxes=boxes)


def _referee_said(crop: CropLabels | None) -> dict:
    """The referee's answers about a crop, as a decision keeps them (nothing where it was not asked or said "none"
    to everything)."""
    if crop is None or crop.referee is None:
        return {}
    named = {about: answer for about in (CLASS, LABEL) if (answer := crop.referee.named(about))}
    if not named:
        return {}
    return {"referee_model": crop.referee.model,
            "referee_entity": named[CLASS].answer if CLASS in named else None,
            "referee_label": named[LABEL].answer if LABEL in named else None,
            "referee_probability": min(answer.probability for answer in named.values())}


def merged(earlier: ImageReview | None, later: ImageReview) -> ImageReview:
    """A later answer added to an earlier one on the same content (corrections files add to what was decided): a
    box decided again takes the later decision, keyed by the box decided (or drawn), so reading the same file twice
    changes nothing; the review names every reviewer whose decisions it still holds."""
    if earlier is None or earlier.sha256 != later.sha256:
        return later
    decided = {tuple(d.model_box or d.box) for d in later.boxes}
    kept = [d for d in earlier.boxes if tuple(d.model_box or d.box) not in decided]
    boxes = kept + later.boxes
    names = dict.fromkeys(d.reviewer or earlier.reviewer for d in boxes)  # first decision first, each name once
    return later.model_copy(update={"boxes": boxes, "reviewer": ", ".join(names) or later.reviewer,
                                    "origin": f"{earlier.origin}; {later.origin}"})


def _inferred(item: Submitted, box: list[float] | None, model_box: list[float], model_entity: str,
              model_label: str | None) -> Verdict:
    if item.removed:
        return Verdict.REJECTED
    moved = box is not None and iou(box, model_box) < UNCHANGED_BOX_IOU
    relabelled = (item.entity and item.entity != model_entity) or (item.label and item.label != model_label)
    return Verdict.CORRECTED if moved or relabelled else Verdict.ACCEPTED


def _pixels(item: Submitted, detections: DetectionsRecord) -> list[float] | None:
    if item.box is not None:
        return [float(v) for v in item.box]
    if item.box_percent is None:
        return None
    x, y, w, h = item.box_percent
    width, height = detections.width, detections.height
    return [round(x * width / 100, 2), round(y * height / 100, 2), round((x + w) * width / 100, 2),
            round((y + h) * height / 100, 2)]
