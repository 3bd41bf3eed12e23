"""What each Qdrant point carries, so people can filter by it ("only golden retrievers", "needs review")."""

from __future__ import annotations

import re
from typing import Any

from ..records import (
    BoxDecision,
    CropLabels,
    DetectionsRecord,
    EmbeddingsRecord,
    Label,
    LabelsRecord,
    SourceImageRecord,
    SpecialistLabel,
    Verdict,
)
from ..review.decisions import AppliedReview, outstanding_disagreements, outstanding_review

SCENE_SCORES_KEPT = 5  # the most likely scene tags' probabilities, for display; the filter is `scene_tags`


def capture_payload(source: SourceImageRecord) -> dict[str, Any]:
    """When, where and with what the photo was taken (EXIF), on image and crop points alike, so both can be
    filtered by time range and place. `location` is Qdrant's geo format; absent fields are left out, not null,
    so a filter on them never matches a photo that did not say."""
    capture = source.facts.capture if source.facts else None
    if capture is None:
        return {}
    payload: dict[str, Any] = {}
    if capture.taken_at:
        payload["taken_at"] = capture.taken_at.isoformat()
    if capture.latitude is not None and capture.longitude is not None:
        payload["location"] = {"lat": capture.latitude, "lon": capture.longitude}
    if capture.camera:
        payload["camera"] = capture.camera
    return payload


def crop_payload(source: SourceImageRecord, crop: CropLabels, detector_model: str, embedding_model: str,
                 reviewed: AppliedReview | None = None) -> dict[str, Any]:
    """A crop's point: what the committee said, or, where a person decided it, what they said (`reviewed`, with the
    model's answer kept under `review`). Rejected boxes get no point at all (see `stored_points`)."""
    payload: dict[str, Any] = capture_payload(source) | {
        "image_id": source.partition_key,
        "batch": source.batch,  # the upload batch (Dagster partition) this version was processed in
        "object_key": source.object_key,  # the raw key, for applications that address the store themselves
        "source_uri": source.source_uri,
        "sha256": source.sha256,
        "detection_index": crop.detection_index,
        "box": crop.detection.box,
        "crop_box": crop.crop_box,
        "entity": crop.detection.class_name,
        "confidence": crop.detection.confidence,
        "detector_model": detector_model,
        "embedding_model": embedding_model,
        "needs_review": crop.needs_review,
        "clip_disagrees": bool(crop.second_opinion and crop.second_opinion.needs_review),
        "review_reasons": _review_reasons(crop),
    }
    if crop.second_opinion:
        opinion = crop.second_opinion
        payload["clip_entity"] = opinion.detector.clip
        payload["second_opinion"] = {"entity": opinion.detector.model_dump(),
                                     "label": opinion.expert.model_dump() if opinion.expert else None,
                                     "model": opinion.model}
    if crop.specialist:
        expert = crop.specialist
        payload |= {
            "specialist": expert.specialist,
            "specialist_model": expert.model,
            "label": expert.top.name,
            "label_confidence": expert.top.confidence,
            "labels": [label.name for label in expert.labels],
            "top_k": [label.model_dump(exclude_none=True) for label in expert.labels],
        }
        if taxonomy := expert.top.taxonomy:
            # A taxonomic expert's answer is findable by any of its ranks or its common name: `--label Aves`.
            payload["taxonomy"] = taxonomy
            payload["labels"] += [name for name in taxonomy.values() if name not in payload["labels"]]
    payload["label_source"] = "expert" if crop.specialist else "detector"
    if crop.referee:
        payload["referee"] = crop.referee.model_dump(include={"model", "settled", "said", "answers"})
        if crop.referee.settled:
            payload |= _referee_answer(payload, crop)
    decision = reviewed.decision(crop.detection_index) if reviewed else None
    payload["reviewed"] = decision is not None
    if decision is not None:
        payload |= _human_answer(payload, decision, reviewed)
    return payload


def _referee_answer(payload: dict[str, Any], crop: CropLabels) -> dict[str, Any]:
    """The fields a settling referee's answer overrides: its class and label, with its probability; the committee's
    answers stay readable (`top_k`, `second_opinion`)."""
    opinion = crop.referee
    answer: dict[str, Any] = {"entity": opinion.entity, "label_source": "referee"}
    if opinion.label:
        answer |= {"label": opinion.label, "label_confidence": opinion.probability,
                   "labels": [opinion.label, *(n for n in payload.get("labels", []) if n != opinion.label)]}
    return answer


def _human_answer(payload: dict[str, Any], decision: BoxDecision, reviewed: AppliedReview) -> dict[str, Any]:
    """The fields a reviewer's decision overrides: their class and label are the answer (certain: confidence 1),
    nothing is left to review, and the model's answer stays readable beside it."""
    answer: dict[str, Any] = {
        "entity": decision.entity,
        "label_source": "person",
        "needs_review": False,
        "review_reasons": [],
        "review": {"verdict": decision.verdict.value, "reviewer": reviewed.reviewer,
                   "reviewed_at": reviewed.review.reviewed_at.isoformat(), "model_entity": decision.model_entity,
                   "model_label": decision.model_label, "model_confidence": decision.model_confidence},
    }
    if decision.label:
        answer |= {"label": decision.label, "label_confidence": 1.0,
                   "labels": [decision.label, *(n for n in payload.get("labels", []) if n != decision.label)]}
    return answer


def _review_reasons(crop: CropLabels) -> list[str]:
    """Why a person should look (nothing where the referee settled the crop); the referee's opinion last."""
    if not crop.needs_review:
        return []
    reasons = []
    if crop.specialist and crop.specialist.needs_review:
        reasons.append(f"{crop.specialist.specialist}: {crop.specialist.under_threshold}")
    if crop.second_opinion:
        reasons.extend(crop.second_opinion.disagreements)
    if crop.referee:
        reasons.append(crop.referee.said)
    return reasons


def image_payload(
    source: SourceImageRecord, detections: DetectionsRecord, labels: LabelsRecord, embedded: EmbeddingsRecord,
    reviewed: AppliedReview | None = None,
) -> dict[str, Any]:
    crop_labels = [_as_settled(c) for c in labels.crops if c.specialist]
    scene = labels.scene
    tags = embedded.scene
    settled_classes = _settled_classes(labels)
    payload = capture_payload(source) | {
        "image_id": source.partition_key,
        "batch": source.batch,
        "object_key": source.object_key,
        "source_uri": source.source_uri,
        "sha256": source.sha256,
        "phash": source.facts.phash if source.facts else None,
        "width": detections.width,  # of the normalised copy: boxes are in its pixels
        "height": detections.height,
        "original_width": source.facts.width if source.facts else None,  # box * original_width / width: the original's
        "original_height": source.facts.height if source.facts else None,
        "entity": sorted({settled_classes.get(i, d.class_name) for i, d in enumerate(detections.detections)}),
        "labels": sorted({s.top.name for s in crop_labels + scene}
                         | {name for s in crop_labels for name in (s.top.taxonomy or {}).values()}),
        # The experts' top labels, best first: what a search hit on the whole image shows.
        "top_labels": sorted(
            ({"name": s.top.name, "confidence": s.top.confidence, "specialist": s.specialist}
             | ({"common_name": s.top.taxonomy["common_name"]} if "common_name" in (s.top.taxonomy or {}) else {})
             for s in crop_labels + scene),
            key=lambda label: -label["confidence"],
        ),
        "coral_health": scene[0].top.name if scene else None,
        "coral_scene_score": labels.coral_scene_score,
        "scene_tags": tags.tags if tags else [],
        "scene_scores": dict(list(tags.scores.items())[:SCENE_SCORES_KEPT]) if tags else {},
        "needs_review": any(c.needs_review for c in labels.crops) or any(s.needs_review for s in scene),
        "clip_disagrees": bool(labels.disagreements),
        "detector_model": detections.model,
        "embedding_model": embedded.model,
        "specialist_models": sorted({s.model for s in crop_labels + scene}),
        "reviewed": False,
    }
    if labels.caption:
        payload |= {"caption": labels.caption, "caption_words": caption_words(labels.caption)}
    if reviewed:
        payload |= _reviewed_image(payload, detections, labels, reviewed)
    return payload


def caption_words(text: str) -> list[str]:
    """The words of a caption or a query, lower-cased, each once: text search matches images whose caption has every
    word of the query (a keyword filter on this list, which every index backend answers from a payload index)."""
    return list(dict.fromkeys(re.findall(r"\w+", text.lower())))


def _settled_classes(labels: LabelsRecord) -> dict[int, str]:
    """Detection index -> the class the referee settled the crop on (the detector's, or CLIP's where it agreed)."""
    return {c.detection_index: c.referee.entity for c in labels.crops if c.settled_by_referee}


def _as_settled(crop: CropLabels) -> SpecialistLabel:
    """The crop's expert answer, or, where the referee settled it on a label, that label first with the referee's
    probability (the image's labels and top labels then say what the crop's point says)."""
    expert = crop.specialist
    if not (crop.settled_by_referee and crop.referee.label):
        return expert
    chosen = next((label for label in expert.labels if label.name == crop.referee.label),
                  Label(name=crop.referee.label, confidence=0.0))
    top = chosen.model_copy(update={"confidence": crop.referee.probability})
    return expert.model_copy(update={"labels": [top, *(label for label in expert.labels if label.name != top.name)],
                                     "needs_review": False})


def _reviewed_image(payload: dict[str, Any], detections: DetectionsRecord, labels: LabelsRecord,
                    reviewed: AppliedReview) -> dict[str, Any]:
    """The image's labels as the reviewer left them: decided crops carry the person's answer, rejected boxes are
    gone, drawn boxes are added; what is still undecided keeps the model's answer and its review flag."""
    experts = {c.detection_index: _as_settled(c) for c in labels.crops if c.specialist}
    settled_classes = _settled_classes(labels)
    entities, top_labels, ranks = set(), [], set()
    for index, detection in enumerate(detections.detections):
        decision = reviewed.decision(index)
        if decision and decision.verdict == Verdict.REJECTED:
            continue
        entities.add(decision.entity if decision else settled_classes.get(index, detection.class_name))
        if decision and decision.label:
            top_labels.append({"name": decision.label, "confidence": 1.0,
                               "specialist": experts[index].specialist if index in experts else None,
                               "reviewed": True})
        elif index in experts:
            expert = experts[index]
            top_labels.append({"name": expert.top.name, "confidence": expert.top.confidence,
                               "specialist": expert.specialist})
            ranks |= set((expert.top.taxonomy or {}).values())
    top_labels += [{"name": s.top.name, "confidence": s.top.confidence, "specialist": s.specialist}
                   for s in labels.scene]
    added = [{"entity": d.entity, "label": d.label, "box": d.box} for d in reviewed.added]
    entities |= {d["entity"] for d in added}
    top_labels += [{"name": d["label"], "confidence": 1.0, "specialist": None, "reviewed": True}
                   for d in added if d["label"]]
    return {
        "entity": sorted(entities),
        "labels": sorted({label["name"] for label in top_labels} | ranks),
        "top_labels": sorted(top_labels, key=lambda label: -label["confidence"]),
        "needs_review": bool(outstanding_review(labels, reviewed)),
        "reviewed": True,
        "review": {"reviewer": reviewed.reviewer, "reviewed_at": reviewed.review.reviewed_at.isoformat(),
                   "origin": reviewed.review.origin, "summary": reviewed.summary(),
                   "undecided_disagreements": outstanding_disagreements(labels, reviewed)},
        "added_objects": added,
    }
