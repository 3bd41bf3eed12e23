"""Label Studio's formats: a task per image to review (with the committee's answer as predictions), the labelling
config that shows it, and the annotations its target storage writes back.

A task's regions are the detections, with ids `d<index>`; each carries the detector class as a rectangle label and
the expert's label as a per-region choice, in percent of the image (Label Studio's coordinates). When the reviewer
submits, the annotation holds the regions they kept (ids unchanged, values possibly changed) and those they drew
(new ids); a predicted region missing from it was deleted: the router's false positive.

Target storage writes either the annotation alone with its task nested (Label Studio's default) or, with
`FUTURE_SAVE_TASK_TO_STORAGE`, the whole task with its annotations; both are read.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from ..records import CLASS as ABOUT_CLASS
from ..records import LABEL as ABOUT_LABEL  # the referee's questions; LABEL here is the config's tag
from ..records import DetectionsRecord, LabelsRecord, SourceImageRecord
from ..storage.results_store import ResultsStore
from .submissions import Submission, SubmissionError, Submitted

OBJECT, LABEL, IMAGE = "object", "label", "image"  # the control and object tag names of the config
OTHER_LABEL = "other_label"  # free text per region, for labels of vocabularies too large to list
LISTED_VOCABULARY = 20_000  # labels a drop-down lists at most: BioCLIP's Tree of Life has ~450,000


def task_link(image_id: str, label_studio_url: str | None, results: ResultsStore) -> str:
    """Where a reviewer opens an image's task: its Label Studio project searched for the image, or (no project
    named) the task file the pipeline wrote."""
    if label_studio_url:
        return f"{label_studio_url.rstrip('/')}/data?search={quote(image_id)}"
    return results.store.uri(results.review_task_key(image_id))


def region_id(detection_index: int) -> str:
    return f"d{detection_index}"


def _region(detections: DetectionsRecord, index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A detection's box in Label Studio's percentages, and the fields every result about that region carries."""
    x1, y1, x2, y2 = detections.detections[index].box
    geometry = {"x": 100 * x1 / detections.width, "y": 100 * y1 / detections.height,
                "width": 100 * (x2 - x1) / detections.width, "height": 100 * (y2 - y1) / detections.height,
                "rotation": 0}
    common = {"id": region_id(index), "to_name": IMAGE, "original_width": detections.width,
              "original_height": detections.height, "image_rotation": 0}
    return geometry, common


def task_for(source: SourceImageRecord, detections: DetectionsRecord, labels: LabelsRecord, image_uri: str,
             reasons: list[str]) -> dict[str, Any]:
    """One image as a Label Studio task (import format), its committee answer pre-filled as a prediction."""
    crops = {c.detection_index: c for c in labels.crops}
    results, confidences = [], []
    for index, detection in enumerate(detections.detections):
        geometry, common = _region(detections, index)
        results.append(common | {"from_name": OBJECT, "type": "rectanglelabels", "score": detection.confidence,
                                 "value": geometry | {"rectanglelabels": [detection.class_name]}})
        confidences.append(detection.confidence)
        crop = crops.get(index)
        if crop and crop.specialist:
            top = crop.specialist.top
            if top.taxonomy:  # a Tree of Life label: typed, not listed (see `project_config`)
                results.append(common | {"from_name": OTHER_LABEL, "type": "textarea", "score": top.confidence,
                                         "value": geometry | {"text": [top.name]}})
            else:
                results.append(common | {"from_name": LABEL, "type": "choices", "score": top.confidence,
                                         "value": geometry | {"choices": [top.name]}})
            confidences.append(top.confidence)
    models = sorted({detections.model} | {c.specialist.model for c in labels.crops if c.specialist})
    predictions = [{"model_version": " + ".join(models), "score": round(min(confidences, default=1.0), 4),
                    "result": results}]
    if referee := _referee_prediction(detections, labels):
        predictions.append(referee)
    return {
        "data": {
            IMAGE: image_uri,  # the normalised copy the boxes were measured on, upright whatever the original's EXIF
            "partition_key": source.partition_key,
            "source_uri": source.source_uri,
            "sha256": source.sha256,
            "why": "; ".join(reasons) or "sampled for measuring accuracy",
            "regions": [region_id(i) for i in range(len(detections.detections))],
        },
        # The lowest confidence in the image: the Data Manager's prediction-score column sorts the doubtful first.
        "predictions": predictions,
    }


def _referee_prediction(detections: DetectionsRecord, labels: LabelsRecord) -> dict[str, Any] | None:
    """The referee's opinion on the crops it judged, as a second prediction a reviewer can switch to: its class and
    label where it named one (not "none"), scored by its probability."""
    judged = [c for c in labels.crops if c.referee]
    if not judged:
        return None
    results, scores = [], []
    for crop in judged:
        detection = detections.detections[crop.detection_index]
        geometry, common = _region(detections, crop.detection_index)
        on_class, named_class, on_label = (crop.referee.answered(ABOUT_CLASS), crop.referee.named(ABOUT_CLASS),
                                           crop.referee.named(ABOUT_LABEL))
        entity = named_class.answer if named_class else detection.class_name
        results.append(common | {"from_name": OBJECT, "type": "rectanglelabels",
                                 "score": on_class.probability if on_class else detection.confidence,
                                 "value": geometry | {"rectanglelabels": [entity]}})
        if on_label:
            kind, key = ("textarea", "text") if crop.specialist and crop.specialist.top.taxonomy else ("choices",
                                                                                                        "choices")
            results.append(common | {"from_name": OTHER_LABEL if kind == "textarea" else LABEL, "type": kind,
                                     "score": on_label.probability, "value": geometry | {key: [on_label.answer]}})
        scores.append(crop.referee.probability)
    return {"model_version": judged[0].referee.model, "score": round(min(scores), 4), "result": results}


def project_config(detector_classes: list[str], vocabularies: dict[str, list[str]]) -> str:
    """The labelling config for these tasks: boxes with the detector's classes, a per-region label chosen from the
    experts' vocabularies (a searchable drop-down), and a per-region free-text label for the experts whose
    vocabulary is too large to list (a species name from the Tree of Life)."""
    listed = sorted({name for labels in vocabularies.values() if len(labels) <= LISTED_VOCABULARY for name in labels})
    unlisted = sorted(name for name, labels in vocabularies.items() if len(labels) > LISTED_VOCABULARY)
    classes = "\n".join(f"    <Label value={quoteattr(name)}/>" for name in detector_classes)
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in listed)
    free_text = (f'  <TextArea name="{OTHER_LABEL}" toName="{IMAGE}" perRegion="true" editable="true" '
                 f'maxSubmissions="1" placeholder={quoteattr("or type a label (" + ", ".join(unlisted) + ")")}/>\n'
                 if unlisted else "")
    return f"""<View>
  <Header value="$partition_key"/>
  <Text name="why" value="$why"/>
  <Image name="{IMAGE}" value="${IMAGE}" zoom="true"/>
  <RectangleLabels name="{OBJECT}" toName="{IMAGE}">
{classes}
  </RectangleLabels>
  <Choices name="{LABEL}" toName="{IMAGE}" perRegion="true" layout="select" required="false">
{choices}
  </Choices>
{free_text}</View>
"""


def parse_annotation_file(data: bytes, origin: str) -> Submission:
    """A file Label Studio's target storage wrote, as a submission (SubmissionError if it is not one of ours)."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SubmissionError(f"not JSON: {error}") from error
    if not isinstance(document, dict):
        raise SubmissionError("not a Label Studio annotation or task (a JSON object was expected)")
    if "annotations" in document:  # the whole task
        task, annotations = document, [a for a in document["annotations"] if not a.get("was_cancelled")]
        if not annotations:
            raise SubmissionError("the task has no submitted annotation")
        annotation = max(annotations, key=lambda a: a.get("updated_at") or a.get("created_at") or "")
    else:  # the annotation, its task nested
        annotation, task = document, document.get("task")
        if not isinstance(task, dict):
            raise SubmissionError("an annotation without its task: cannot tell which image it is about")
    data_fields = task.get("data") or {}
    partition_key = data_fields.get("partition_key")
    if not isinstance(partition_key, str) or not isinstance(annotation.get("result"), list):
        raise SubmissionError("not a task this project exported (no partition_key in its data, or no result)")
    return Submission(
        partition_key=partition_key,
        reviewer=_who(annotation.get("completed_by")),
        reviewed_at=_when(annotation.get("updated_at") or annotation.get("created_at")),
        origin=f"label-studio annotation {annotation.get('id', '?')} ({origin})",
        items=_items(annotation["result"], list(data_fields.get("regions") or [])),
    )


def _items(results: list[dict[str, Any]], shown: list[str]) -> list[Submitted]:
    regions: dict[str, Submitted] = {}
    for result in results:
        if not isinstance(result, dict) or result.get("to_name") != IMAGE or "id" not in result:
            continue
        identity, value = str(result["id"]), result.get("value") or {}
        index = int(identity[1:]) if identity in shown else None
        item = regions.setdefault(identity, Submitted(detection_index=index))
        if result.get("type") == "rectanglelabels":
            item.box_percent = [float(value[k]) for k in ("x", "y", "width", "height")]
            item.entity = (value.get("rectanglelabels") or [None])[0]
        elif result.get("type") == "choices" and result.get("from_name") == LABEL:
            item.label = item.label or (value.get("choices") or [None])[0]
        elif result.get("type") == "textarea" and result.get("from_name") == OTHER_LABEL:
            typed = " ".join(str(t) for t in value.get("text") or []).strip()
            item.label = typed or item.label  # a typed label wins over the drop-down
    deleted = [Submitted(detection_index=int(identity[1:]), removed=True) for identity in shown
               if identity not in regions]
    return [*regions.values(), *deleted]


def _who(completed_by: Any) -> str:
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("username") or f"user {completed_by.get('id')}")
    return f"label-studio user {completed_by}" if completed_by is not None else "label-studio"


def _when(stamp: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
