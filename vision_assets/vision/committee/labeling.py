"""Specialist labels for a batch of images: crops routed to their experts, each expert called once per batch
with every crop it owns across all images; the coral expert sees whole images that look like a reef. The crops
are the ones the embeddings stage cut (and CLIP embedded), so every model judges the same pixels."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from ..images.working import WorkingPicture, as_working
from ..models.device_time import DeviceTime
from ..models.failures import ModelFailure, answer_each
from ..records import CropLabels, DetectionsRecord, Label, LabelsRecord, SpecialistLabel
from .routing import CORAL, crop_box


class Classifies(Protocol):
    identity: object

    def classify(self, images: Sequence[Image.Image]) -> list[list[Label]]: ...


@dataclass(frozen=True)
class LabelingPolicy:
    routes: Mapping[str, str]
    thresholds: Mapping[str, float]  # specialist -> review threshold
    crop_margin: float = 0.1
    coral_scene_threshold: float = 0.5
    default_threshold: float = 0.5

    def threshold(self, specialist: str) -> float:
        return self.thresholds.get(specialist, self.default_threshold)


def _specialist_label(specialist: str, model: Classifies, labels: list[Label], policy: LabelingPolicy) -> SpecialistLabel:
    threshold = policy.threshold(specialist)
    return SpecialistLabel(
        specialist=specialist,
        model=str(model.identity),
        labels=labels,
        threshold=threshold,
        needs_review=not labels or labels[0].confidence < threshold,
    )


def label_batch(
    images: Mapping[str, Image.Image | WorkingPicture],
    detections: Mapping[str, DetectionsRecord],
    crop_boxes: Mapping[str, Mapping[int, list[int]]],
    specialists: Mapping[str, Classifies],
    coral_scores: Mapping[str, float],
    policy: LabelingPolicy,
    crops: Mapping[str, Mapping[int, Image.Image]] | None = None,
    clock: DeviceTime | None = None,
) -> dict[str, LabelsRecord]:
    """`images`: the pictures, or the working copies as decoded at a reduced scale (boxes stay in the working copy's
    pixels). `crop_boxes`: image -> detection index -> the crop already cut for it (a detection without one is cut here
    with the policy's margin). `crops`: image -> detection index -> the crop's pixels, already cut (at the expert's
    side) by the embeddings stage; the others are cut from the pictures here. `clock`: where each expert's seconds
    are shared out among the images of its crops."""
    clock = clock or DeviceTime()
    records = {key: LabelsRecord(partition_key=key, crops=[], coral_scene_score=coral_scores.get(key)) for key in images}
    pictures = {key: as_working(image) for key, image in images.items()}
    queued: dict[str, list[tuple[str, CropLabels, Image.Image]]] = defaultdict(list)  # expert -> (image, crop, pixels)
    for key, picture in pictures.items():
        for index, detection in enumerate(detections[key].detections):
            box = crop_boxes.get(key, {}).get(index) or crop_box(detection.box, picture.width, picture.height,
                                                                  policy.crop_margin)
            crop = CropLabels(detection_index=index, detection=detection, crop_box=box)
            records[key].crops.append(crop)
            specialist = policy.routes.get(detection.class_name)
            if specialist in specialists:
                handed = (crops or {}).get(key, {}).get(index)
                queued[specialist].append((key, crop, handed if handed is not None else picture.crop(box)))

    for specialist, work in queued.items():  # one call per expert for the whole batch
        model = specialists[specialist]
        answers = clock.timed(specialist, model, [key for key, *_ in work], answer_each, model.classify,
                              [pixels for *_, pixels in work])
        for (key, crop, _), labels in zip(work, answers, strict=True):
            if isinstance(labels, ModelFailure):  # this crop alone: the rest of the batch has its labels
                records[key].model_errors.append(f"crop {crop.detection_index} ({crop.detection.class_name}): "
                                                 f"{specialist} failed: {labels.error}")
            else:
                crop.specialist = _specialist_label(specialist, model, labels, policy)

    coral = specialists.get(CORAL)
    reef_keys = [key for key, score in coral_scores.items() if score >= policy.coral_scene_threshold]
    if coral is not None and reef_keys:
        answers = clock.timed(CORAL, coral, reef_keys, answer_each, coral.classify, [pictures[k].image for k in reef_keys])
        for key, labels in zip(reef_keys, answers, strict=True):
            if isinstance(labels, ModelFailure):
                records[key].model_errors.append(f"scene ({CORAL}): {CORAL} failed: {labels.error}")
                continue
            records[key].scene.append(_specialist_label(CORAL, coral, labels, policy))
    for key, record in records.items():
        record.device_seconds = clock.of(key)
    return records
