"""Typed records that cross module boundaries and are persisted in the results store."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel, Field


class StoredObject(BaseModel):
    """One object in an image store, as a listing or a HEAD request reports it."""

    key: str
    size: int
    etag: str
    last_modified: datetime


class RegisteredImage(BaseModel):
    """The stored mapping from an image id (`partition_key`) back to the object version it was registered for.

    The sensor writes it (in the batch's manifest) before it adds the batch; assets read it instead of guessing the
    object key from the image id (which is sanitised and may carry a hash suffix).
    """

    partition_key: str
    object_key: str
    source_uri: str
    etag: str
    size: int
    last_modified: datetime


class RejectionCode(str, Enum):
    EMPTY = "empty"
    TOO_LARGE = "too_large"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_SMALL = "too_small"
    CORRUPT = "corrupt"
    MISSING_OBJECT = "missing_object"
    UNREGISTERED = "unregistered"


class Rejection(BaseModel):
    code: RejectionCode
    message: str


class CaptureFacts(BaseModel):
    """When, where and with what the photo was taken, as its EXIF says (vision/images/exif.py)."""

    taken_at: datetime | None = None  # an instant when the camera wrote its UTC offset, else its clock read as UTC
    latitude: float | None = None
    longitude: float | None = None
    camera: str | None = None  # "Apple iPhone 15 Pro"


class ImageFacts(BaseModel):
    """What validation learnt about a decodable image."""

    format: str
    width: int  # after EXIF orientation
    height: int
    original_mode: str
    frames: int = 1
    exif_orientation: int | None = None
    icc_profile: bool = False
    phash: str
    capture: CaptureFacts | None = None


class SourceImageRecord(BaseModel):
    """Per-image outcome of `source_images`, persisted as `<results>/<image id>/~source.json`. (`partition_key` is the
    image id: the name it had when every image was a partition, kept so stored records stay readable.)"""

    partition_key: str
    batch: str | None = None  # the upload batch this version was read for; None in records made before batches
    object_key: str
    source_uri: str
    etag: str | None = None
    size_bytes: int
    sha256: str | None = None
    status: str  # "valid" | "rejected"
    rejection: Rejection | None = None
    facts: ImageFacts | None = None
    normalized_key: str | None = None
    # The size of that copy, which every box is measured in; smaller than `facts` when the original was larger
    # than the working side (VISION_ASSETS_WORKING_IMAGE_SIDE). None in records written before it was kept.
    normalized_width: int | None = None
    normalized_height: int | None = None
    # The long side of `~model-input.jpg`, the picture at the detector's side that the model stages read where it is
    # large enough (None: not written; records before it read the working copy).
    model_input_side: int | None = None
    preview_key: str | None = None  # rejected files only: a thumbnail of what still decoded
    warnings: list[str] = Field(default_factory=list)
    processed_at: datetime
    seconds: float

    @property
    def working_size(self) -> tuple[int, int] | None:
        """The working copy's size (None in records made before it was kept)."""
        return (self.normalized_width, self.normalized_height) if self.normalized_width and self.normalized_height \
            else None

    @property
    def is_valid(self) -> bool:
        return self.status == "valid"


class Detection(BaseModel):
    """One object the router found. `box` is [x1, y1, x2, y2] in pixels of the normalised image."""

    box: list[float]
    class_id: int
    class_name: str
    confidence: float


class DetectionsRecord(BaseModel):
    """Per-image outcome of `detections`, persisted as `<results>/<image id>/~detections.json`."""

    partition_key: str
    model: str
    width: int
    height: int
    detections: list[Detection]
    error: str | None = None  # the detector raised on this image (no detections; the image goes no further)
    # The models' seconds on this image, by model (vision/models/device_time.py): what it cost.
    device_seconds: dict[str, float] = Field(default_factory=dict)
    # vision/reuse.py: what shaped this result (models, settings), and the image it was copied from, if it was (the
    # same bytes, processed before under another id: no model ran).
    version: str | None = None
    reused_from: str | None = None


class Label(BaseModel):
    name: str
    confidence: float
    # Taxonomic experts (BioCLIP): kingdom, phylum, class, order, family, genus, species, common_name.
    taxonomy: dict[str, str] | None = None


class SpecialistLabel(BaseModel):
    """What one specialist said about one crop (or, for scene specialists, the whole image)."""

    specialist: str
    model: str
    labels: list[Label]  # top-k, best first
    threshold: float
    needs_review: bool

    @property
    def top(self) -> Label:
        return self.labels[0]

    @property
    def under_threshold(self) -> str:
        """Why it needs review, for a person: `siamese 0.31 < 0.5`."""
        return f"{self.top.name} {self.top.confidence:.2f} < {self.threshold}"


class Agreement(BaseModel):
    """One model's answer next to CLIP's zero-shot answer over the same vocabulary."""

    said: str  # the detector's class, or the expert's top label
    clip: str  # CLIP's most likely entry of the same vocabulary
    clip_score: float  # CLIP's probability for its own answer
    said_score: float  # CLIP's probability for what the model said

    @property
    def agrees(self) -> bool:
        return self.said == self.clip

    @property
    def margin(self) -> float:
        """How much more CLIP believes its own answer than the model's (0 when they agree)."""
        return round(self.clip_score - self.said_score, 6)


class SecondOpinion(BaseModel):
    """The generalist's audit of one crop: CLIP zero-shot over the detector's classes and over the routed expert's
    labels. A disagreement by at least `margin_threshold` is a reason to look, written for a person."""

    model: str
    detector: Agreement
    expert: Agreement | None = None  # None: no expert for this class
    margin_threshold: float
    disagreements: list[str] = Field(default_factory=list)  # "detector: cat; CLIP: dog 0.81"

    @property
    def needs_review(self) -> bool:
        return bool(self.disagreements)


# What the referee is asked about a crop (vision/committee/referee.py), and the answer that names no allowed label.
CLASS, LABEL, NONE = "class", "label", "none"


class RefereeAnswer(BaseModel):
    """The referee's answer to one closed question about a crop: every allowed answer and "none", with the
    probability the model gives each as its reply (they sum to 1)."""

    about: str  # CLASS: which detector class it is; LABEL: which of the expert's labels
    probabilities: dict[str, float]  # in the order asked, NONE last

    @property
    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda item: -item[1])

    @property
    def answer(self) -> str:
        return self.ranked[0][0]

    @property
    def probability(self) -> float:
        return self.ranked[0][1]

    @property
    def margin(self) -> float:
        """How much more the referee believes its answer than the next one."""
        ranked = self.ranked
        return round(ranked[0][1] - (ranked[1][1] if len(ranked) > 1 else 0.0), 6)


class RefereeOpinion(BaseModel):
    """What the referee made of one doubtful crop. `settled`: its answers were sure enough (probability and margin)
    and consistent, so the crop needs no person: `entity` and `label` are its answer. Otherwise `said` is its opinion
    for the person who decides. `judged_class` and `judged_labels` are what it was asked about: the opinion applies
    only while the crop's detector class and expert labels are still those (a re-run with other models asks again)."""

    model: str
    judged_class: str
    judged_labels: list[str] = Field(default_factory=list)
    answers: list[RefereeAnswer]
    settled: bool
    entity: str | None = None
    label: str | None = None
    probability: float = 0.0  # of the settling answer (the label's, where it settled one)
    said: str  # "referee: golden retriever 0.91 (next: labrador 0.05)"

    def answered(self, about: str) -> RefereeAnswer | None:
        """Its answer about CLASS or LABEL, if it was asked that."""
        return next((answer for answer in self.answers if answer.about == about), None)

    def named(self, about: str) -> RefereeAnswer | None:
        """Its answer about CLASS or LABEL where it named one of the allowed labels (not NONE)."""
        answer = self.answered(about)
        return answer if answer is not None and answer.answer != NONE else None


class CropLabels(BaseModel):
    detection_index: int
    detection: Detection
    crop_box: list[int]  # the detection box plus margin, clamped to the image
    specialist: SpecialistLabel | None = None  # None: no specialist for this class
    second_opinion: SecondOpinion | None = None  # None: no usable crop vector
    # Set when read together with the referee stage's record (LabelsRecord.refereed), never stored in ~labels.json.
    referee: RefereeOpinion | None = None

    @property
    def settled_by_referee(self) -> bool:
        return bool(self.referee and self.referee.settled)

    @property
    def doubtful(self) -> bool:
        """What the committee alone leaves open: an expert under its threshold, or CLIP contradicting the detector
        or the expert. The referee's questions are about these."""
        return bool(self.specialist and self.specialist.needs_review) or bool(
            self.second_opinion and self.second_opinion.needs_review)

    @property
    def needs_review(self) -> bool:
        """Doubtful and not settled by the referee: a person should look."""
        return self.doubtful and not self.settled_by_referee


class SceneTags(BaseModel):
    """CLIP zero-shot over the scene vocabulary, for the whole image."""

    model: str
    scores: dict[str, float]  # every tag's probability (they sum to 1)
    tags: list[str]  # the tags at or above the tag threshold, most likely first


class LabelsRecord(BaseModel):
    """Per-image outcome of `specialist_labels`, persisted as `<results>/<image id>/~labels.json`."""

    partition_key: str
    crops: list[CropLabels]
    scene: list[SpecialistLabel] = Field(default_factory=list)  # whole-image specialists (coral health)
    coral_scene_score: float | None = None
    # An expert that raised on a crop or the whole image, each with its error ("crop 2 (dog): dog_breeds failed:
    # ValueError: ..."): the crop has no label, and the image needs a person.
    model_errors: list[str] = Field(default_factory=list)
    caption: str | None = None  # set when read with the referee's record (LabelsRecord.refereed), never stored here
    # The models' seconds on this image, by model (vision/models/device_time.py): what it cost.
    device_seconds: dict[str, float] = Field(default_factory=dict)
    # vision/reuse.py: what shaped this result (models, settings), and the image it was copied from, if it was (the
    # same bytes, processed before under another id: no model ran).
    version: str | None = None
    reused_from: str | None = None

    @property
    def needing_review(self) -> list[str]:
        crops = [f"crop {c.detection_index} ({c.detection.class_name}): {c.specialist.under_threshold}"
                 for c in self.crops if c.specialist and c.specialist.needs_review and not c.settled_by_referee]
        scene = [f"scene ({s.specialist}): {s.under_threshold}" for s in self.scene if s.needs_review]
        return self.model_errors + crops + scene

    @property
    def disagreements(self) -> list[str]:
        """Where CLIP's second opinion contradicts the detector or the expert, per crop (the referee had not
        settled)."""
        return [f"crop {c.detection_index}: {reason}" for c in self.crops
                if c.second_opinion and not c.settled_by_referee for reason in c.second_opinion.disagreements]

    def refereed(self, referee: RefereeRecord | None) -> LabelsRecord:
        """This record with the referee's opinions on its crops, where they still apply (the crop's detector class
        and expert labels are the ones it judged), and its caption of the image."""
        if referee is None:
            return self
        opinions = {c.detection_index: c.opinion for c in referee.crops}
        crops = []
        for crop in self.crops:
            opinion = opinions.get(crop.detection_index)
            labels = [label.name for label in crop.specialist.labels] if crop.specialist else []
            if opinion and opinion.judged_class == crop.detection.class_name and opinion.judged_labels == labels:
                crop = crop.model_copy(update={"referee": opinion})
            crops.append(crop)
        # Its cost travels with its opinions: the labels as read are what the referee stage spent too.
        return self.model_copy(update={"crops": crops, "device_seconds": self.device_seconds | referee.device_seconds,
                                       "caption": referee.caption})


class RefereeCrop(BaseModel):
    detection_index: int
    opinion: RefereeOpinion


class RefereeRecord(BaseModel):
    """Per-image outcome of `referee_opinions`, persisted as `<results>/<image id>/~referee.json` (written for
    images with a doubtful crop, and for every image while captions are on)."""

    partition_key: str
    model: str
    caption: str | None = None  # a short description of the whole image, by the same model
    crops: list[RefereeCrop] = Field(default_factory=list)
    # Doubtful crops it did not judge, each with why: the batch's budget was spent, or the referee was unreachable.
    not_judged: dict[int, str] = Field(default_factory=dict)
    device_seconds: dict[str, float] = Field(default_factory=dict)  # {"referee": its seconds on this image's crops}
    # vision/reuse.py: what shaped this result (models, settings), and the image it was copied from, if it was (the
    # same bytes, processed before under another id: no model ran).
    version: str | None = None
    reused_from: str | None = None


class EmbeddingsRecord(BaseModel):
    """Per-image outcome of `embeddings` (vectors in `~embeddings.npz`: `image` (d,), `crops` (n, d)). The crops are
    cut here, once: the experts later see exactly the pixels these vectors describe."""

    partition_key: str
    model: str
    dimension: int
    crop_indexes: list[int]  # the detection each crop vector belongs to
    crop_boxes: list[list[int]] = Field(default_factory=list)  # parallel to crop_indexes
    scene: SceneTags | None = None
    problems: list[str] = Field(default_factory=list)
    # The models' seconds on this image, by model (vision/models/device_time.py): what it cost.
    device_seconds: dict[str, float] = Field(default_factory=dict)
    # vision/reuse.py: what shaped this result (models, settings), and the image it was copied from, if it was (the
    # same bytes, processed before under another id: no model ran).
    version: str | None = None
    reused_from: str | None = None


class IndexRecord(BaseModel):
    """Per-image outcome of `qdrant_index`: which points it wrote and whether the index now holds exactly them."""

    partition_key: str
    image_point: str
    crop_points: list[str]
    problems: list[str] = Field(default_factory=list)


class Verdict(str, Enum):
    """What a reviewer said about one box."""

    ACCEPTED = "accepted"  # the model's box, class and label are right
    CORRECTED = "corrected"  # the box is an object, but its class or label (or the box itself) was wrong
    REJECTED = "rejected"  # no such object: the router's false positive
    ADDED = "added"  # an object the router missed


class BoxDecision(BaseModel):
    """One reviewer decision, with what the model had said, so decisions double as ground truth. `box` is
    [x1, y1, x2, y2] in pixels of the normalised image: the reviewer's box where they drew or moved one, else the
    model's; `model_box` is the box the decision was made about (None for an added box)."""

    verdict: Verdict
    box: list[float]
    model_box: list[float] | None = None
    entity: str | None = None  # the detector class the reviewer confirmed or gave
    label: str | None = None  # the expert label the reviewer confirmed or gave (None: the object has no expert)
    model_entity: str | None = None
    model_label: str | None = None
    model_confidence: float | None = None  # the expert's confidence in `model_label`
    detector_confidence: float | None = None
    specialist: str | None = None  # the expert that answered ("dog_breeds")
    reviewer: str | None = None  # who decided this box (None in reviews written before it was kept per box)
    # What the referee answered about the box, where it did (its class and label: None where it said "none" or was
    # not asked that), so its precision is measured per model version like the experts'.
    referee_model: str | None = None
    referee_entity: str | None = None
    referee_label: str | None = None
    referee_probability: float | None = None


class ImageReview(BaseModel):
    """A person's verdict on one image, persisted as `<results>/<image id>/~review.json`. It applies to the content
    it was made on (`sha256`): a re-upload of the same bytes keeps it, other bytes do not."""

    partition_key: str
    sha256: str | None
    reviewer: str  # everyone whose decisions it holds, "ana, bo", in the order they first decided
    reviewed_at: datetime
    origin: str  # where it came from: "label-studio annotation 17 (results/~review/annotations/17)"
    boxes: list[BoxDecision]
