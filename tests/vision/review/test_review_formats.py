"""The review loop's formats without Dagster: Label Studio tasks out, its annotations and our corrections in, the
decisions matched to (possibly new) detections, and the accuracy they measure."""

import json
from datetime import UTC, datetime

import pytest

from vision_assets.vision.records import (
    CropLabels,
    Detection,
    DetectionsRecord,
    ImageFacts,
    Label,
    LabelsRecord,
    SourceImageRecord,
    SpecialistLabel,
    Verdict,
)
from vision_assets.vision.review.accuracy import measure, plot, report_markdown
from vision_assets.vision.review.corrections import parse_corrections_file
from vision_assets.vision.review.decisions import apply_review, outstanding_review
from vision_assets.vision.review.label_studio import parse_annotation_file, project_config, task_for
from vision_assets.vision.review.submissions import SubmissionError, build_review, merged

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
SOURCE = SourceImageRecord(partition_key="park/dogs.jpg", object_key="park/dogs.jpg", source_uri="s3://b/park/dogs.jpg",
                           sha256="ab" * 32, size_bytes=1, status="valid", processed_at=NOW, seconds=0.1,
                           facts=ImageFacts(format="JPEG", width=400, height=200, original_mode="RGB", phash="0" * 16))
DETECTIONS = DetectionsRecord(partition_key="park/dogs.jpg", model="yolov8n@1", width=400, height=200, detections=[
    Detection(box=[0, 0, 100, 100], class_id=16, class_name="dog", confidence=0.9),
    Detection(box=[200, 50, 300, 150], class_id=16, class_name="dog", confidence=0.6),
    Detection(box=[350, 0, 400, 40], class_id=15, class_name="cat", confidence=0.3),
])


def expert(name: str, confidence: float, specialist: str = "dog_breeds") -> SpecialistLabel:
    return SpecialistLabel(specialist=specialist, model=f"{specialist}@1", labels=[Label(name=name, confidence=confidence)],
                           threshold=0.5, needs_review=confidence < 0.5)


LABELS = LabelsRecord(partition_key="park/dogs.jpg", crops=[
    CropLabels(detection_index=0, detection=DETECTIONS.detections[0], crop_box=[0, 0, 100, 100],
               specialist=expert("golden retriever", 0.8)),
    CropLabels(detection_index=1, detection=DETECTIONS.detections[1], crop_box=[200, 50, 300, 150],
               specialist=expert("pug", 0.3)),
    CropLabels(detection_index=2, detection=DETECTIONS.detections[2], crop_box=[350, 0, 400, 40],
               specialist=expert("persian", 0.2, "cat_breeds")),
])


def annotated(task: dict, keep: dict[str, str | None], added: list[dict] = (), nested: bool = True) -> bytes:
    """What Label Studio's target storage writes after a reviewer started from the prediction: the regions in
    `keep` (region id -> new expert label, None = unchanged), the others deleted, `added` drawn."""
    result = []
    for region in task["predictions"][0]["result"]:
        if region["id"] not in keep:
            continue
        region = json.loads(json.dumps(region))
        region.pop("score", None)
        if region["type"] == "choices" and keep[region["id"]]:
            region["value"]["choices"] = [keep[region["id"]]]
        result.append(region)
    result += added
    annotation = {"id": 17, "result": result, "was_cancelled": False, "completed_by": {"id": 1, "email": "ana@zoo.org"},
                  "created_at": "2026-12-04T11:00:00.000000Z", "updated_at": "2026-12-04T11:05:00.000000Z"}
    if nested:  # Label Studio's default: the annotation, its task inside
        return json.dumps(annotation | {"task": {"id": 3, "data": task["data"]}}).encode()
    return json.dumps({"id": 3, "data": task["data"], "annotations": [annotation]}).encode()  # FUTURE_SAVE_TASK_...


def test_a_task_carries_the_committee_answer_in_label_studio_coordinates():
    task = task_for(SOURCE, DETECTIONS, LABELS, "s3://b/results/park/dogs.jpg/~normalized.jpg", ["crop 1: pug"])
    assert task["data"]["partition_key"] == "park/dogs.jpg" and task["data"]["regions"] == ["d0", "d1", "d2"]
    [prediction] = task["predictions"]
    assert prediction["score"] == 0.2  # the most doubtful answer sorts the task first
    assert prediction["model_version"] == "cat_breeds@1 + dog_breeds@1 + yolov8n@1"
    box, label = [r for r in prediction["result"] if r["id"] == "d1"]
    assert box["value"] == {"x": 50.0, "y": 25.0, "width": 25.0, "height": 50.0, "rotation": 0,
                                 "rectanglelabels": ["dog"]}
    assert label["type"] == "choices" and label["value"]["choices"] == ["pug"] and label["value"]["x"] == 50.0
    config = project_config(["cat", "dog"], {"dog_breeds": ["pug", "golden retriever", 'say "hi" & <go>'],
                                             "wildlife": [f"taxon {i}" for i in range(20_001)]})
    assert '<Choices name="label" toName="image" perRegion="true"' in config
    assert "<Choice value='say \"hi\" &amp; &lt;go&gt;'/>" in config  # quoted, whatever a label holds
    assert "taxon 1" not in config and '<TextArea name="other_label" toName="image" perRegion="true"' in config


def test_a_tree_of_life_label_is_typed_and_a_typed_label_wins():
    taxon = SpecialistLabel(specialist="wildlife", model="hf-hub:imageomics/bioclip@1", threshold=0.5, needs_review=True,
                            labels=[Label(name="Ursus arctos", confidence=0.4,
                                          taxonomy={"kingdom": "Animalia", "species": "Ursus arctos"})])
    labels = LABELS.model_copy(update={"crops": [LABELS.crops[0].model_copy(update={"specialist": taxon}), *LABELS.crops[1:]]})
    task = task_for(SOURCE, DETECTIONS, labels, "s3://b/x.jpg", [])
    typed = [r for r in task["predictions"][0]["result"] if r["id"] == "d0" and r["type"] == "textarea"]
    assert typed and typed[0]["from_name"] == "other_label" and typed[0]["value"]["text"] == ["Ursus arctos"]
    annotation = json.loads(annotated(task, {"d0": None, "d1": None, "d2": None}))
    for region in annotation["result"]:
        if region["type"] == "textarea":
            region["value"]["text"] = ["Ursus maritimus"]
    review = build_review(parse_annotation_file(json.dumps(annotation).encode(), "a"), SOURCE.sha256, DETECTIONS,
                          labels)
    assert (review.boxes[0].verdict, review.boxes[0].label, review.boxes[0].model_label) == (
        Verdict.CORRECTED, "Ursus maritimus", "Ursus arctos")


@pytest.mark.parametrize("nested", [True, False])
def test_an_annotation_becomes_decisions_with_what_the_model_said(nested):
    task = task_for(SOURCE, DETECTIONS, LABELS, "s3://b/x.jpg", [])
    drawn = {"id": "new1", "from_name": "object", "to_name": "image", "type": "rectanglelabels",
             "value": {"x": 0, "y": 50, "width": 10, "height": 50, "rotation": 0, "rectanglelabels": ["cat"]}}
    submission = parse_annotation_file(annotated(task, {"d0": None, "d1": "beagle"}, [drawn], nested), "ann/17")
    assert submission.partition_key == "park/dogs.jpg" and submission.reviewer == "ana@zoo.org"
    review = build_review(submission, SOURCE.sha256, DETECTIONS, LABELS)
    by_verdict = {d.verdict: d for d in review.boxes}
    assert set(by_verdict) == {Verdict.ACCEPTED, Verdict.CORRECTED, Verdict.REJECTED, Verdict.ADDED}
    corrected = by_verdict[Verdict.CORRECTED]
    assert (corrected.label, corrected.model_label, corrected.model_confidence) == ("beagle", "pug", 0.3)
    assert by_verdict[Verdict.REJECTED].model_entity == "cat" and by_verdict[Verdict.REJECTED].entity is None
    assert by_verdict[Verdict.ADDED].box == [0.0, 100.0, 40.0, 200.0] and by_verdict[Verdict.ADDED].entity == "cat"
    assert by_verdict[Verdict.ACCEPTED].label == "golden retriever"
    assert review.reviewed_at == datetime(2026, 12, 4, 11, 5, tzinfo=UTC)


@pytest.mark.parametrize("data,why", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"id": 1, "result": []}).encode(), "without its task"),
    (json.dumps({"id": 1, "result": [], "task": {"data": {"image": "x"}}}).encode(), "not a task this project"),
    (json.dumps({"data": {"partition_key": "a"}, "annotations": [{"was_cancelled": True, "result": []}]}).encode(),
     "no submitted annotation"),
])
def test_files_that_are_not_our_annotations_say_why(data, why):
    with pytest.raises(SubmissionError, match=why):
        parse_annotation_file(data, "ann/x")


def test_corrections_json_and_its_mistakes():
    data = json.dumps({"image": "park/dogs.jpg", "reviewer": "bo", "decisions": [
        {"box": 1, "verdict": "corrected", "label": "beagle"}, {"box": 2, "verdict": "rejected"},
        {"verdict": "added", "xyxy": [1, 2, 30, 40], "entity": "cat", "label": "persian"}]}).encode()
    [submission] = parse_corrections_file(data, "corrections/a.json", NOW)
    review = build_review(submission, SOURCE.sha256, DETECTIONS, LABELS)
    assert [d.verdict for d in review.boxes] == [Verdict.CORRECTED, Verdict.REJECTED, Verdict.ADDED]
    for wrong, why in [({"image": "a"}, "decisions"), ({"image": "a", "decisions": [{"verdict": "maybe", "box": 0}]},
                                                       "verdict must be"),
                       ({"image": "a", "decisions": [{"verdict": "accepted"}]}, "names the detection"),
                       ({"image": "a", "decisions": [{"verdict": "corrected", "box": 0}]}, "says what is right"),
                       ({"image": "a", "decisions": [{"verdict": "added", "xyxy": [5, 5, 1, 1], "entity": "x"}]},
                        "x1 < x2")]:
        with pytest.raises(SubmissionError, match=why):
            parse_corrections_file(json.dumps(wrong).encode(), "c.json", NOW)
    [late] = parse_corrections_file(json.dumps({"image": "park/dogs.jpg", "decisions": [
        {"box": 7, "verdict": "rejected"}]}).encode(), "c.json", NOW)
    with pytest.raises(SubmissionError, match="box 7 does not exist"):
        build_review(late, SOURCE.sha256, DETECTIONS, LABELS)


def test_a_review_by_two_reviewers_names_both_and_keeps_each_ones_boxes():
    def said(reviewer: str, decisions: list[dict]):
        data = json.dumps({"image": "park/dogs.jpg", "reviewer": reviewer, "decisions": decisions}).encode()
        [submission] = parse_corrections_file(data, f"corrections/{reviewer}.json", NOW)
        return build_review(submission, SOURCE.sha256, DETECTIONS, LABELS)

    ana = said("ana", [{"box": 1, "verdict": "corrected", "label": "beagle"}, {"box": 2, "verdict": "rejected"}])
    bo = said("bo", [{"box": 2, "verdict": "accepted"}])  # bo decides box 2 again, and nothing else
    both = merged(ana, bo)
    assert both.reviewer == "ana, bo"
    assert [(d.reviewer, d.verdict) for d in both.boxes] == [("ana", Verdict.CORRECTED), ("bo", Verdict.ACCEPTED)]
    assert merged(both, bo) == merged(ana, bo).model_copy(update={"origin": merged(both, bo).origin})  # read twice
    assert merged(ana, said("ana", [{"box": 1, "verdict": "accepted"}])).reviewer == "ana"
    assert apply_review(both, SOURCE.sha256, DETECTIONS).summary().startswith("reviewed by ana, bo:")
    other_content = bo.model_copy(update={"sha256": "0" * 64})
    assert merged(ana, other_content) is other_content  # decisions on other bytes do not mix


def test_decisions_follow_the_objects_not_the_indexes_and_only_the_same_content():
    task = task_for(SOURCE, DETECTIONS, LABELS, "s3://b/x.jpg", [])
    review = build_review(parse_annotation_file(annotated(task, {"d0": None, "d1": "beagle"}), "a"),
                          SOURCE.sha256, DETECTIONS, LABELS)
    # A new router finds the same objects in another order, boxes a little off, and one more.
    rerun = DETECTIONS.model_copy(update={"detections": [
        Detection(box=[352, 2, 400, 42], class_id=15, class_name="cat", confidence=0.4),
        Detection(box=[205, 55, 305, 150], class_id=16, class_name="dog", confidence=0.7),
        Detection(box=[100, 150, 140, 200], class_id=0, class_name="person", confidence=0.8),
        Detection(box=[2, 0, 100, 98], class_id=16, class_name="dog", confidence=0.95),
    ]})
    applied = apply_review(review, SOURCE.sha256, rerun)
    assert applied.rejected(0) and applied.decision(1).label == "beagle" and applied.decision(3).label == \
        "golden retriever"
    assert applied.decision(2) is None and not applied.unmatched
    assert apply_review(review, "cd" * 32, rerun) is None  # other pixels under the same key: the review is moot
    assert outstanding_review(LABELS, apply_review(review, SOURCE.sha256, DETECTIONS)) == []
    assert len(outstanding_review(LABELS, None)) == 2


def test_accuracy_and_threshold_suggestions():
    reviews = []
    for n in range(40):  # dog_breeds: right above 0.6, wrong below; the router wrong once in 8
        confidence = n / 40
        right = confidence >= 0.6
        detections = DetectionsRecord(partition_key=f"i{n}", model="m", width=100, height=100, detections=[
            Detection(box=[0, 0, 50, 50], class_id=16, class_name="dog", confidence=confidence)])
        labels = LabelsRecord(partition_key=f"i{n}", crops=[CropLabels(
            detection_index=0, detection=detections.detections[0], crop_box=[0, 0, 50, 50],
            specialist=expert("pug", confidence))])
        decision = {"box": 0, "verdict": "rejected"} if n % 8 == 0 else (
            {"box": 0, "verdict": "accepted"} if right else {"box": 0, "verdict": "corrected", "label": "beagle"})
        [submission] = parse_corrections_file(json.dumps({"image": f"i{n}", "decisions": [decision]}).encode(),
                                              "c", NOW)
        reviews.append(build_review(submission, "s", detections, labels))
    router, experts = measure(reviews)
    assert (router.judged, router.correct) == (40, 35)
    dogs = experts["dog_breeds"]
    assert dogs.judged == 35 and dogs.precision == pytest.approx(sum(1 for n in range(40) if n % 8 and n >= 24) / 35)
    suggestion = dogs.suggested_threshold(0.95)
    assert suggestion.threshold == 0.6 and suggestion.trusted_wrong == 0
    assert dogs.suggested_threshold(1.01) is None
    table = report_markdown(router, experts, {"dog_breeds": 0.5}, 0.95)
    assert "| dog_breeds | 35 |" in table and "| 0.5 | 0.6 |" in table
    assert plot([router, dogs]).size == (640, 360)


def test_the_referees_precision_is_measured_per_model_version_from_what_reviewers_kept():
    from vision_assets.vision.committee.referee import RefereePolicy, opinion_on, questions_for
    from vision_assets.vision.records import RefereeCrop, RefereeRecord

    reviews = []
    for n in range(20):  # the referee says "pug": right for the first 15 images, the reviewer says beagle after
        detections = DetectionsRecord(partition_key=f"r{n}", model="m", width=100, height=100, detections=[
            Detection(box=[0, 0, 50, 50], class_id=16, class_name="dog", confidence=0.9)])
        labels = LabelsRecord(partition_key=f"r{n}", crops=[CropLabels(
            detection_index=0, detection=detections.detections[0], crop_box=[0, 0, 50, 50],
            specialist=expert("pug", 0.3))])
        labels.crops[0].specialist.labels.append(Label(name="beagle", confidence=0.2))
        [ask] = questions_for(labels.crops[0])
        version = "smolvlm@1" if n < 10 else "smolvlm@2"
        opinion = opinion_on(labels.crops[0], [ask], [{"pug": 0.55, "beagle": 0.4, "none": 0.05}], version,
                             RefereePolicy())
        refereed = labels.refereed(RefereeRecord(partition_key=f"r{n}", model=version,
                                                 crops=[RefereeCrop(detection_index=0, opinion=opinion)]))
        decision = {"box": 0, "verdict": "accepted"} if n < 15 else {"box": 0, "verdict": "corrected",
                                                                      "label": "beagle"}
        [submission] = parse_corrections_file(json.dumps({"image": f"r{n}", "decisions": [decision]}).encode(),
                                              "c", NOW)
        review = build_review(submission, "s", detections, refereed)
        assert (review.boxes[0].referee_label, review.boxes[0].referee_probability) == ("pug", 0.55)
        reviews.append(review)
    router, models = measure(reviews)
    first, second = models["referee smolvlm@1"], models["referee smolvlm@2"]
    assert (first.judged, first.precision) == (10, 1.0) and (second.judged, second.precision) == (10, 0.5)
    table = report_markdown(router, models, {"referee smolvlm@2": 0.6}, 0.95)
    assert "| referee smolvlm@2 | 10 | 5 | 50.0% | 0.6 |" in table
