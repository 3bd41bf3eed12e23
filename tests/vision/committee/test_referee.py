"""The referee's part in the committee, without a model: what it is asked, when its answers settle a crop, the
budget, and how its opinions change what people and the index see. The model itself: tests/vision/test_models.py."""

from datetime import UTC, datetime

import pytest
from PIL import Image

from vision_assets.vision.committee.referee import (
    CLASS,
    LABEL,
    RefereePolicy,
    judge_crops,
    opinion_on,
    questions_for,
    within_budget,
)
from vision_assets.vision.index.payloads import crop_payload, image_payload
from vision_assets.vision.records import (
    Agreement,
    BoxDecision,
    CropLabels,
    Detection,
    DetectionsRecord,
    EmbeddingsRecord,
    ImageReview,
    Label,
    LabelsRecord,
    RefereeCrop,
    RefereeRecord,
    SecondOpinion,
    SourceImageRecord,
    SpecialistLabel,
    Verdict,
)
from vision_assets.vision.review.decisions import apply_review, outstanding_disagreements, outstanding_review
from vision_assets.vision.review.label_studio import task_for

POLICY = RefereePolicy(min_probability=0.6, margin=0.2, max_crops_per_batch=2)


def crop(index=0, class_name="dog", labels=(("golden_retriever", 0.3), ("labrador_retriever", 0.25)),
         threshold=0.5, clip_class=None, clip_label=None):
    expert = None
    if labels:
        expert = SpecialistLabel(specialist="dog_breeds", model="dogs@1", threshold=threshold,
                                 labels=[Label(name=n, confidence=c) for n, c in labels],
                                 needs_review=labels[0][1] < threshold)
    opinion = None
    if clip_class or clip_label:
        on_class = Agreement(said=class_name, clip=clip_class or class_name, clip_score=0.9 if clip_class else 0.8,
                             said_score=0.05 if clip_class else 0.8)
        on_label = None
        if expert:
            on_label = Agreement(said=labels[0][0], clip=clip_label or labels[0][0], clip_score=0.9,
                                 said_score=0.05 if clip_label else 0.9)
        reasons = [f"{who}: {a.said}; CLIP: {a.clip} {a.clip_score:.2f}" for who, a in
                   (("detector", on_class), ("expert", on_label)) if a and not a.agrees]
        opinion = SecondOpinion(model="clip@1", detector=on_class, expert=on_label, margin_threshold=0.5,
                                disagreements=reasons)
    return CropLabels(detection_index=index, crop_box=[0, 0, 40, 40], specialist=expert, second_opinion=opinion,
                      detection=Detection(box=[0, 0, 40, 40], class_id=16, class_name=class_name, confidence=0.7))


def test_a_doubtful_expert_label_is_asked_among_its_top_k_and_clips_pick_as_people_say_them():
    [ask] = questions_for(crop(clip_label="beagle"))
    assert ask.about == LABEL and ask.subject == "a dog"
    assert ask.names == ("golden_retriever", "labrador_retriever", "beagle")
    assert ask.shown == ("golden retriever", "labrador retriever", "beagle")


def test_a_contradicted_detector_is_asked_between_its_class_and_clips_and_a_sure_crop_is_not_asked():
    asks = questions_for(crop(labels=(("golden_retriever", 0.9),), clip_class="cat"))
    assert [(a.about, a.names) for a in asks] == [(CLASS, ("dog", "cat")), (LABEL, ("golden_retriever",))]
    assert questions_for(crop(labels=(("golden_retriever", 0.9),))) == []


def test_sure_answers_settle_the_crop_and_unsure_or_none_leave_it_for_a_person():
    doubtful = crop()
    [ask] = questions_for(doubtful)
    sure = opinion_on(doubtful, [ask], [{"golden retriever": 0.85, "labrador retriever": 0.1, "none": 0.05}], "ref@1",
                      POLICY)
    assert sure.settled and sure.label == "golden_retriever" and sure.probability == 0.85
    assert sure.answers[0].probabilities == {"golden_retriever": 0.85, "labrador_retriever": 0.1, "none": 0.05}
    assert sure.said == "referee: label: golden_retriever 0.85 (next: labrador_retriever 0.10)"
    close = opinion_on(doubtful, [ask], [{"golden retriever": 0.55, "labrador retriever": 0.4, "none": 0.05}],
                       "ref@1", POLICY)
    assert not close.settled and close.label is None and close.said.startswith("referee unsure")
    neither = opinion_on(doubtful, [ask], [{"golden retriever": 0.05, "labrador retriever": 0.05, "none": 0.9}],
                         "ref@1", POLICY)
    assert not neither.settled  # "none of them" is never a label


def test_a_referee_that_names_another_class_leaves_the_experts_labels_to_a_person():
    doubtful = crop(clip_class="cat")
    asks = questions_for(doubtful)
    said = [{"dog": 0.05, "cat": 0.9, "none": 0.05}, {"golden retriever": 0.9, "labrador retriever": 0.05,
                                                      "none": 0.05}]
    opinion = opinion_on(doubtful, asks, said, "ref@1", POLICY)
    assert not opinion.settled and "referee says cat, not dog" in opinion.said
    alone = crop(labels=(), clip_class="cat")  # no expert: the class is the whole answer
    opinion = opinion_on(alone, questions_for(alone), said[:1], "ref@1", POLICY)
    assert opinion.settled and opinion.entity == "cat" and opinion.label is None


def test_the_budget_takes_the_most_doubtful_crops_first():
    crops = [("a.jpg", crop(0, labels=(("x", 0.45),))), ("b.jpg", crop(0, labels=(("x", 0.05),))),
             ("c.jpg", crop(0, labels=(("x", 0.3),)))]
    chosen, left = within_budget(crops, 2)
    assert [image for image, _ in chosen] == ["b.jpg", "c.jpg"] and [image for image, _ in left] == ["a.jpg"]


class Scripted:
    """A referee that says what a test tells it, and records what it was asked."""

    def __init__(self, *answers):
        self.answers, self.asked = list(answers), []

    def judge(self, questions):
        self.asked.extend(questions)
        return [self.answers.pop(0) for _ in questions]


def test_judge_crops_asks_every_question_of_a_chunk_in_one_call_and_regroups_the_answers():
    first, second = crop(0), crop(1, clip_class="cat")
    referee = Scripted({"golden retriever": 0.9, "labrador retriever": 0.05, "none": 0.05},
                       {"dog": 0.9, "cat": 0.05, "none": 0.05},
                       {"golden retriever": 0.3, "labrador retriever": 0.3, "none": 0.4})
    pixels = Image.new("RGB", (40, 40))
    opinions = judge_crops([("a.jpg", first), ("a.jpg", second)], {("a.jpg", 0): pixels, ("a.jpg", 1): pixels},
                           referee, "ref@1", POLICY)
    assert len(referee.asked) == 3 and "golden retriever; labrador retriever" in referee.asked[0].prompt
    assert opinions[("a.jpg", 0)].settled and not opinions[("a.jpg", 1)].settled


def settled_record(labels: LabelsRecord, label="golden_retriever") -> RefereeRecord:
    doubtful = labels.crops[0]
    [ask] = questions_for(doubtful)
    opinion = opinion_on(doubtful, [ask], [{"golden retriever": 0.9, "labrador retriever": 0.05, "none": 0.05}],
                         "ref@1", POLICY)
    return RefereeRecord(partition_key=labels.partition_key, model="ref@1",
                         crops=[RefereeCrop(detection_index=0, opinion=opinion)])


@pytest.fixture
def image():
    labels = LabelsRecord(partition_key="a.jpg", crops=[crop(0, labels=(("labrador_retriever", 0.3),
                                                                         ("golden_retriever", 0.28)))])
    detections = DetectionsRecord(partition_key="a.jpg", model="yolo@1", width=40, height=40,
                                  detections=[labels.crops[0].detection])
    source = SourceImageRecord(partition_key="a.jpg", object_key="a.jpg", source_uri="s3://b/a.jpg", size_bytes=10,
                               sha256="abc", status="valid", processed_at=datetime.now(UTC), seconds=0.1)
    return labels, detections, source


def test_a_settled_crop_leaves_the_review_queue_with_the_referees_label_and_source(image):
    labels, detections, source = image
    assert labels.crops[0].needs_review and outstanding_review(labels, None)
    refereed = labels.refereed(settled_record(labels))
    assert not refereed.crops[0].needs_review and refereed.needing_review == []
    assert outstanding_review(refereed, None) == [] and outstanding_disagreements(refereed, None) == []
    payload = crop_payload(source, refereed.crops[0], "yolo@1", "clip@1")
    assert payload["needs_review"] is False and payload["review_reasons"] == []
    assert payload["label"] == "golden_retriever" and payload["label_source"] == "referee"
    assert payload["label_confidence"] == 0.9 and payload["referee"]["settled"]
    embedded = EmbeddingsRecord(partition_key="a.jpg", model="clip@1", dimension=4, crop_indexes=[0])
    whole = image_payload(source, detections, refereed, embedded)
    assert not whole["needs_review"] and whole["top_labels"][0]["name"] == "golden_retriever"


def test_an_opinion_on_other_labels_does_not_apply(image):
    labels, _, _ = image
    record = settled_record(labels)
    rerun = labels.model_copy(deep=True)
    rerun.crops[0].specialist.labels[0].name = "beagle"  # a new expert said something else
    assert rerun.refereed(record).crops[0].referee is None and rerun.refereed(record).crops[0].needs_review


def test_a_persons_verdict_wins_over_the_referee(image):
    labels, detections, source = image
    refereed = labels.refereed(settled_record(labels))
    review = ImageReview(partition_key="a.jpg", sha256="abc", reviewer="ana", reviewed_at=datetime.now(UTC),
                         origin="test", boxes=[BoxDecision(verdict=Verdict.CORRECTED, box=[0, 0, 40, 40],
                                                           model_box=[0, 0, 40, 40], entity="dog", label="pug")])
    payload = crop_payload(source, refereed.crops[0], "yolo@1", "clip@1", apply_review(review, "abc", detections))
    assert payload["label"] == "pug" and payload["label_source"] == "person" and payload["reviewed"]


def test_an_unsettled_opinion_goes_with_the_crop_to_the_person_and_into_label_studio(image):
    labels, detections, source = image
    doubtful = labels.crops[0]
    [ask] = questions_for(doubtful)
    unsure = opinion_on(doubtful, [ask], [{"golden retriever": 0.5, "labrador retriever": 0.45, "none": 0.05}],
                        "ref@1", POLICY)
    refereed = labels.refereed(RefereeRecord(partition_key="a.jpg", model="ref@1",
                                             crops=[RefereeCrop(detection_index=0, opinion=unsure)]))
    payload = crop_payload(source, refereed.crops[0], "yolo@1", "clip@1")
    assert payload["needs_review"] and payload["review_reasons"][-1].startswith("referee unsure")
    task = task_for(source, detections, refereed, "s3://b/a.jpg", outstanding_review(refereed, None))
    committee, referee = task["predictions"]
    assert referee["model_version"] == "ref@1" and referee["score"] == 0.5
    assert [r["value"].get("choices") for r in referee["result"] if r["type"] == "choices"] == [["golden_retriever"]]


def test_a_run_asks_within_the_budget_and_an_outage_leaves_the_rest_for_people_at_once():
    from vision_assets.vision.committee.refereeing import RefereeRun
    from vision_assets.vision.models.remote import ModelServiceUnavailable

    doubtful = {"b1": [(f"{n}.jpg", crop(0, labels=(("x", 0.1 * n), ("y", 0.05)))) for n in range(1, 4)]}
    run = RefereeRun("ref@1", "v1", POLICY, off=None)
    asked = run.plan(doubtful)  # the budget is 2: the two least sure
    assert [image for image, _ in asked] == ["1.jpg", "2.jpg"]
    assert "over the batch's budget" in run.records["3.jpg"].not_judged[0]

    class Down:
        calls = 0

        def judge(self, questions):
            Down.calls += 1
            raise ModelServiceUnavailable("model service at http://x unreachable for 120s")

    warnings = []
    cut = lambda chunk: {(image, c.detection_index): Image.new("RGB", (8, 8)) for image, cs in chunk.items() for c in cs}
    run.ask(asked, Down, cut, images_per_chunk=1, warn=warnings.append)
    assert Down.calls == 1 and len(warnings) == 1  # the second chunk does not wait out the service again
    assert all(run.records[image].not_judged[0].startswith("referee unavailable") for image in ("1.jpg", "2.jpg"))
    assert run.by_batch(["b1"], {f"{n}.jpg": "b1" for n in range(1, 4)}, doubtful) == {
        "b1": {"doubtful_crops": 3, "crops_refereed": 0, "crops_settled": 0}}
