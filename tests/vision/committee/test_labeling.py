"""Routing and labelling logic with stand-in experts (the real ones are exercised in test_models and the pipeline)."""

from PIL import Image

from vision_assets.vision.committee.labeling import LabelingPolicy, label_batch
from vision_assets.vision.committee.routing import CORAL, DEFAULT_ROUTES, crop_box, parse_routes
from vision_assets.vision.records import Detection, DetectionsRecord, Label


class Expert:
    """Answers with a fixed label list and remembers what it was shown."""

    def __init__(self, name, confidence):
        self.identity = f"{name}-model"
        self.labels = [Label(name=f"{name}-label", confidence=confidence), Label(name="other", confidence=1 - confidence)]
        self.calls: list[list[tuple[int, int]]] = []

    def classify(self, images):
        self.calls.append([image.size for image in images])
        return [list(self.labels) for _ in images]


def detection(name, box, confidence=0.9):
    return Detection(box=box, class_id=0, class_name=name, confidence=confidence)


def test_crop_box_grows_and_clamps():
    assert crop_box([10, 10, 110, 60], 200, 100, 0.1) == [0, 5, 120, 65]
    assert crop_box([190, 90, 200, 100], 200, 100, 0.5) == [185, 85, 200, 100]
    assert crop_box([50, 50, 50, 50], 100, 100, 0.1) == [50, 50, 51, 51]  # never empty


def test_routes_parse_and_default():
    assert parse_routes("dog=dog_breeds, bird = wildlife") == {"dog": "dog_breeds", "bird": "wildlife"}
    assert DEFAULT_ROUTES["dog"] == "dog_breeds" and DEFAULT_ROUTES["zebra"] == "wildlife"


def test_each_expert_is_called_once_per_batch_with_every_crop_it_owns():
    images = {"a": Image.new("RGB", (200, 100)), "b": Image.new("RGB", (300, 300))}
    detections = {
        "a": DetectionsRecord(partition_key="a", model="yolo", width=200, height=100, detections=[
            detection("dog", [0, 0, 50, 50]), detection("person", [60, 0, 100, 90]), detection("cat", [100, 0, 190, 90])]),
        "b": DetectionsRecord(partition_key="b", model="yolo", width=300, height=300, detections=[
            detection("dog", [10, 10, 200, 200]), detection("zebra", [0, 0, 300, 300])]),
    }
    experts = {"dog_breeds": Expert("dog", 0.9), "cat_breeds": Expert("cat", 0.3), "wildlife": Expert("wild", 0.8)}
    policy = LabelingPolicy(routes=DEFAULT_ROUTES, thresholds={"cat_breeds": 0.5}, crop_margin=0.0)
    records = label_batch(images, detections, {}, experts, {}, policy)

    assert [len(call) for call in experts["dog_breeds"].calls] == [2]  # both images' dogs, one call
    assert experts["dog_breeds"].calls[0] == [(50, 50), (190, 190)]
    person = records["a"].crops[1]
    assert person.specialist is None  # no expert for people: kept, unlabelled
    cat = records["a"].crops[2].specialist
    assert cat.needs_review and cat.threshold == 0.5 and cat.model == "cat-model"
    assert not records["b"].crops[0].specialist.needs_review
    assert records["a"].needing_review == ["crop 2 (cat): cat-label 0.30 < 0.5"]


def test_coral_expert_sees_whole_images_that_look_like_a_reef():
    images = {"reef": Image.new("RGB", (64, 64)), "street": Image.new("RGB", (64, 64))}
    detections = {k: DetectionsRecord(partition_key=k, model="yolo", width=64, height=64, detections=[]) for k in images}
    coral = Expert("coral", 0.7)
    records = label_batch(images, detections, {}, {CORAL: coral}, {"reef": 0.9, "street": 0.1},
                          LabelingPolicy(routes={}, thresholds={}, coral_scene_threshold=0.5))
    assert [s.top.name for s in records["reef"].scene] == ["coral-label"]
    assert records["street"].scene == [] and records["reef"].coral_scene_score == 0.9
    assert coral.calls == [[(64, 64)]]


def test_experts_see_the_crops_the_embeddings_stage_cut():
    images = {"a": Image.new("RGB", (200, 100))}
    detections = {"a": DetectionsRecord(partition_key="a", model="yolo", width=200, height=100,
                                        detections=[detection("dog", [10, 10, 50, 50])])}
    dogs = Expert("dog", 0.9)
    records = label_batch(images, detections, {"a": {0: [0, 0, 120, 80]}}, {"dog_breeds": dogs}, {},
                          LabelingPolicy(routes=DEFAULT_ROUTES, thresholds={}, crop_margin=0.1))
    assert records["a"].crops[0].crop_box == [0, 0, 120, 80] and dogs.calls == [[(120, 80)]]


class FailsOnWide(Expert):
    """Raises on any batch holding a crop wider than 150 px, as a model that cannot take a picture does."""

    def classify(self, images):
        if any(image.width > 150 for image in images):
            raise ValueError("cannot take this crop")
        return super().classify(images)


def test_an_expert_that_raises_on_a_crop_fails_that_crop_alone():
    images = {"a": Image.new("RGB", (400, 100)), "b": Image.new("RGB", (100, 100))}
    detections = {
        "a": DetectionsRecord(partition_key="a", model="yolo", width=400, height=100, detections=[
            detection("dog", [0, 0, 300, 100]), detection("dog", [310, 0, 400, 100])]),
        "b": DetectionsRecord(partition_key="b", model="yolo", width=100, height=100, detections=[
            detection("dog", [0, 0, 90, 90])]),
    }
    policy = LabelingPolicy(routes=DEFAULT_ROUTES, thresholds={}, crop_margin=0.0)
    records = label_batch(images, detections, {}, {"dog_breeds": FailsOnWide("dog", 0.9)}, {}, policy)
    wide, narrow = records["a"].crops
    assert wide.specialist is None and narrow.specialist.top.name == "dog-label"
    assert records["b"].crops[0].specialist.top.name == "dog-label"
    assert records["a"].model_errors == ["crop 0 (dog): dog_breeds failed: ValueError: cannot take this crop"]
    assert records["a"].needing_review[0].startswith("crop 0 (dog): dog_breeds failed") and not records["b"].model_errors
