"""The committee as the model service holds it on one device: the same model classes a run uses in-process
(vision/models/), built from the same settings, each loaded on first use. Requests are answered a group at a time
(one task of one model, the items of every request in it in one batched call), and failures are kept as small as
they can be: a CUDA out-of-memory error halves the batch and tries again, an item that makes a model raise fails
alone, and a model that cannot load fails its requests with the loader's message. Plain Python: the LitServe API
(api.py) calls it, the tests call it directly."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..vision.models.base import Model, ModelLoadError
from ..vision.models.failures import ModelFailure, answers_per_item, described
from ..vision.models.referee import Question
from ..vision.models.wire import (
    ITEM_TASKS,
    TEXT_TASKS,
    ItemAnswer,
    ModelRef,
    ModelRequest,
    decode_picture,
    encode_vector,
)


def refusal(held: dict[str, ModelRef], asked: ModelRef) -> str | None:
    """Why a request for `asked` cannot be served by a service holding `held` (None: it can). A revision is compared
    only where both sides know one (a client without the model's files knows just its id)."""
    mine = held.get(asked.role)
    if mine is None:
        return (f"this model service holds no {asked.role!r} model (it holds: {', '.join(sorted(held)) or 'none'}); "
                "start it with the same model settings as the pipeline")
    if mine.model_id != asked.model_id or (mine.revision and asked.revision and mine.revision != asked.revision):
        held_as = f"{mine.model_id}@{mine.revision}" if mine.revision else mine.model_id
        asked_as = f"{asked.model_id}@{asked.revision}" if asked.revision else asked.model_id
        return (f"this model service holds {held_as} as {asked.role}, not {asked_as}: start it with the same model "
                "settings as the pipeline (VISION_ASSETS_*_MODEL), or point the pipeline at the service that holds it")
    return None


@dataclass
class GroupFigures:
    """What one group's call cost: the metrics' raw material."""

    task: str
    role: str
    items: int
    requests: int
    seconds: float
    failed_items: int


@dataclass
class HeldCommittee:
    models: dict[str, Model]  # role -> model, not loaded until asked for
    held: dict[str, ModelRef]  # role -> the identity clients must name
    device: str
    figures: list[GroupFigures] = field(default_factory=list)  # filled by answer(), read and cleared by the caller

    @property
    def loaded(self) -> list[str]:
        return sorted(role for role, model in self.models.items() if model.is_loaded)

    def answer(self, requests: Sequence[ModelRequest]) -> list[dict[str, Any]]:
        """One answer per request, in order: `{"answers": [ItemAnswer...]}`, `{"value": ...}` for a whole-model task,
        or `{"refused": why}` / `{"failed": why}`."""
        answers: list[dict[str, Any] | None] = [None] * len(requests)
        groups: dict[tuple[str, str], list[int]] = {}
        for position, request in enumerate(requests):
            if why := refusal(self.held, request.model):
                answers[position] = {"refused": why}
            else:
                groups.setdefault((request.task, request.model.role), []).append(position)
        for (task, role), positions in groups.items():
            try:
                self.models[role].load()  # a model that cannot load fails its requests with the loader's message
            except ModelLoadError as error:
                for position in positions:
                    answers[position] = {"failed": str(error)}
                continue
            started = time.perf_counter()
            done = self._group(task, self.models[role], [requests[p] for p in positions])
            failed = sum(1 for d in done for a in d.get("answers", []) if a["error"])
            self.figures.append(GroupFigures(task, role, sum(_size(requests[p]) for p in positions), len(positions),
                                             time.perf_counter() - started, failed))
            for position, answer in zip(positions, done, strict=True):
                answers[position] = answer
        return answers  # type: ignore[return-value]

    def _group(self, task: str, model: Model, requests: list[ModelRequest]) -> list[dict[str, Any]]:
        if task not in ITEM_TASKS:
            return [{"value": self._whole(task, model, request)} for request in requests]
        items: list[Any] = []
        for request in requests:
            if task == "judge":
                items.extend(_question(picture, prompt, choices) for picture, prompt, choices
                             in zip(request.images, request.prompts, request.choices, strict=True))
            else:
                items.extend(request.texts if task in TEXT_TASKS else [_picture(p) for p in request.images])
        # A picture that does not decode fails alone, as a picture the model raises on.
        unreadable = {i: item for i, item in enumerate(items) if isinstance(item, ItemAnswer)}
        readable = [item for i, item in enumerate(items) if i not in unreadable]
        started = time.perf_counter()
        computed = run_items(_item_call(task, model), readable)
        share = (time.perf_counter() - started) / max(1, len(readable))  # what each item cost: the client's device time
        for answer in computed:
            answer.seconds = share
        rest = iter(computed)
        answers = [unreadable[i] if i in unreadable else next(rest) for i in range(len(items))]
        out, start = [], 0
        for request in requests:
            size = _size(request)
            out.append({"answers": [a.model_dump() for a in answers[start:start + size]]})
            start += size
        return out

    def _whole(self, task: str, model: Any, request: ModelRequest) -> Any:
        if task == "describe":
            return describe(model)
        if task == "prompt_vectors":
            return [encode_vector(v) for v in model.prompt_vectors(request.texts)]
        if task == "label_names":
            return model.label_names
        raise ValueError(f"unknown task {task!r}")


def _size(request: ModelRequest) -> int:
    return len(request.texts) if request.task in TEXT_TASKS else len(request.images)


def describe(model: Any) -> dict[str, Any]:
    """What a client needs to know of a model before it sends pictures: what it is, where it runs, the side it
    reads, and its vocabulary's size (the detector's classes whole: the second opinion needs their names)."""
    facts: dict[str, Any] = {"identity": str(model.identity), "device": model.device, "precision": model.precision_used,
                             "input_side": model.input_side}
    if hasattr(model, "class_names"):
        facts["class_names"] = model.class_names
    if hasattr(model, "dimension"):
        facts["dimension"] = model.dimension
    if hasattr(model, "label_count"):
        facts["label_count"] = model.label_count
    return facts


def _item_call(task: str, model: Any) -> Callable[[list[Any]], list[Any]]:
    if task == "detect":
        return lambda images: [[d.model_dump() for d in found] for found in model.detect(images)]
    if task == "embed_images":
        return lambda images: [encode_vector(v) for v in model.embed_images(images)]
    if task == "embed_texts":
        return lambda texts: [encode_vector(v) for v in model.embed_texts(texts)]
    if task == "classify":
        return lambda images: [[label.model_dump() for label in labels] for labels in model.classify(images)]
    if task == "judge":
        return model.judge
    if task == "caption":
        return model.caption
    raise ValueError(f"unknown task {task!r}")


def _picture(picture: dict[str, Any]) -> Any:
    try:
        return decode_picture(picture)
    except Exception as error:  # noqa: BLE001 - a picture that does not decode is that item's failure, reported
        return ItemAnswer(error=f"the picture sent does not decode: {described(error)}")


def _question(picture: dict[str, Any], prompt: str, choices: list[str]) -> Any:
    decoded = _picture(picture)
    return decoded if isinstance(decoded, ItemAnswer) else Question(decoded, prompt, tuple(choices))


def run_items(call: Callable[[list[Any]], list[Any]], items: list[Any]) -> list[ItemAnswer]:
    """`call` over the items, each item's answer or its error (see `answers_per_item`: out-of-memory halves the batch,
    any other error is the failing items' alone)."""
    return [ItemAnswer(error=a.error) if isinstance(a, ModelFailure) else ItemAnswer(value=a)
            for a in answers_per_item(call, items)]
