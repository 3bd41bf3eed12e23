"""The referee's part in the committee: which crops it is asked about, what it is asked, and when its answers
settle a crop without a person.

A crop is doubtful when its expert is under its threshold or CLIP contradicts the detector or the expert. The
referee is asked closed questions about it, one per thing in doubt:
- "class" (CLIP contradicted the detector): the detector's class or CLIP's, or none;
- "label" (the crop has an expert): the expert's top-k labels, with CLIP's pick among the expert's labels where it
  is not one of them, or none.
The crop is settled when every answer is an allowed label (not "none"), at or above the minimum probability and
ahead of the next answer by the margin, and the answers agree with each other: a class other than the detector's
leaves the expert's labels (which are about the detector's class) without a judge, so a person decides.
The most doubtful crops go first, up to a budget per batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from ..models.device_time import DeviceTime
from ..models.referee import Question, closed_prompt
from ..records import CLASS, LABEL, NONE, CropLabels, Label, RefereeAnswer, RefereeOpinion


@dataclass(frozen=True)
class RefereePolicy:
    min_probability: float = 0.6
    margin: float = 0.2
    max_crops_per_batch: int = 256


@dataclass(frozen=True)
class Ask:
    """One closed question about a crop: the names as the models say them, and as the referee reads them."""

    about: str
    names: tuple[str, ...]
    shown: tuple[str, ...]  # parallel to `names`: "golden retriever" for `golden_retriever`
    subject: str  # what the picture shows, for the prompt: "a dog"


def shown_as(label: Label | str) -> str:
    """A label as a person would say it: underscores as spaces; a taxon by its common name where it has one."""
    if isinstance(label, Label):
        common = (label.taxonomy or {}).get("common_name")
        return common if common else label.name.replace("_", " ")
    return label.replace("_", " ")


def questions_for(crop: CropLabels) -> list[Ask]:
    """What to ask the referee about a doubtful crop (nothing for a sure one)."""
    if not crop.doubtful:
        return []
    opinion, asks = crop.second_opinion, []
    subject = f"a {shown_as(crop.detection.class_name)}"
    if opinion and _contradicted(opinion.detector, opinion.margin_threshold):
        names = (crop.detection.class_name, opinion.detector.clip)
        asks.append(Ask(CLASS, names, tuple(shown_as(n) for n in names), "an object"))
    if crop.specialist:
        labels = list(crop.specialist.labels)
        names = [label.name for label in labels]
        shown = [shown_as(label) for label in labels]
        if opinion and opinion.expert and opinion.expert.clip not in names:
            names.append(opinion.expert.clip)
            shown.append(shown_as(opinion.expert.clip))
        unique = dict(zip(shown, names, strict=True))  # two labels a person cannot tell apart are asked once
        asks.append(Ask(LABEL, tuple(unique.values()), tuple(unique), subject))
    return asks


def _contradicted(found, threshold: float) -> bool:
    return found is not None and not found.agrees and found.margin >= threshold


def doubt(crop: CropLabels) -> float:
    """How sure the committee is about a crop, lowest first in line for the referee: the expert's confidence
    relative to its threshold where it is under, and CLIP's margin against the detector or the expert."""
    sureness = [1.0]
    if crop.specialist and crop.specialist.needs_review and crop.specialist.threshold > 0:
        sureness.append(crop.specialist.top.confidence / crop.specialist.threshold)
    if opinion := crop.second_opinion:
        sureness += [1.0 - found.margin for found in (opinion.detector, opinion.expert)
                     if _contradicted(found, opinion.margin_threshold)]
    return min(sureness)


def within_budget(doubtful: Sequence[tuple[str, CropLabels]], budget: int
                  ) -> tuple[list[tuple[str, CropLabels]], list[tuple[str, CropLabels]]]:
    """(the crops the referee judges, the rest): the most doubtful first, at most `budget` of them."""
    ranked = sorted(doubtful, key=lambda item: (doubt(item[1]), item[0], item[1].detection_index))
    return ranked[:budget], ranked[budget:]


def _answer(ask: Ask, probabilities: dict[str, float]) -> RefereeAnswer:
    """The model's probabilities by shown text, back to the models' names."""
    by_name = {name: probabilities[shown] for name, shown in zip(ask.names, ask.shown, strict=True)}
    return RefereeAnswer(about=ask.about, probabilities=by_name | {NONE: probabilities[NONE]})


def _sure(answer: RefereeAnswer, policy: RefereePolicy) -> bool:
    return answer.answer != NONE and answer.probability >= policy.min_probability and answer.margin >= policy.margin


def _told(answer: RefereeAnswer) -> str:
    ranked = answer.ranked
    following = f" (next: {ranked[1][0]} {ranked[1][1]:.2f})" if len(ranked) > 1 else ""
    return f"{answer.answer} {answer.probability:.2f}{following}"


def opinion_on(crop: CropLabels, asks: Sequence[Ask], probabilities: Sequence[dict[str, float]], model: str,
               policy: RefereePolicy) -> RefereeOpinion:
    """The referee's opinion on a crop from its answers to `questions_for(crop)`."""
    answers = [_answer(ask, found) for ask, found in zip(asks, probabilities, strict=True)]
    by_topic = {answer.about: answer for answer in answers}
    on_class, on_label = by_topic.get(CLASS), by_topic.get(LABEL)
    entity = on_class.answer if on_class else crop.detection.class_name
    sure = all(_sure(answer, policy) for answer in answers)
    # The expert's labels are about the detector's class: another class leaves them unjudged.
    consistent = on_label is None or entity == crop.detection.class_name
    settled = sure and consistent
    said = "; ".join(f"{answer.about}: {_told(answer)}" for answer in answers)
    if not sure:
        said = f"referee unsure: {said}"
    elif not consistent:
        said = f"referee says {entity}, not {crop.detection.class_name}: {said}"
    else:
        said = f"referee: {said}"
    deciding = on_label or on_class
    return RefereeOpinion(
        model=model, judged_class=crop.detection.class_name,
        judged_labels=[label.name for label in crop.specialist.labels] if crop.specialist else [],
        answers=answers, settled=settled, entity=entity if settled else None,
        label=on_label.answer if settled and on_label else None,
        probability=deciding.probability if deciding else 0.0, said=said)


class Referee(Protocol):
    def judge(self, questions: Sequence[Question]) -> list[dict[str, float]]: ...

    def caption(self, pictures: Sequence[Image.Image]) -> list[str]: ...


CropKey = tuple[str, int]  # (image id, detection index)


def judge_crops(asked: Sequence[tuple[str, CropLabels]], pictures: Mapping[CropKey, Image.Image], referee: Referee,
                model: str, policy: RefereePolicy, clock: DeviceTime | None = None) -> dict[CropKey, RefereeOpinion]:
    """The referee's opinion on each crop asked about (`pictures`: each crop's pixels), every question of every crop
    in one `judge` call (the model batches them); `clock` shares its seconds among the images by their questions."""
    questions, owners, plan = [], [], []
    for image, crop in asked:
        asks = questions_for(crop)
        picture = pictures[(image, crop.detection_index)]
        questions += [Question(picture, closed_prompt(ask.subject, ask.shown), ask.shown) for ask in asks]
        owners += [image] * len(asks)
        plan.append((image, crop, asks))
    answers = (clock or DeviceTime()).timed("referee", referee, owners, referee.judge, questions) if questions else []
    opinions, start = {}, 0
    for image, crop, asks in plan:
        found = answers[start:start + len(asks)]
        start += len(asks)
        opinions[(image, crop.detection_index)] = opinion_on(crop, asks, found, model, policy)
    return opinions
