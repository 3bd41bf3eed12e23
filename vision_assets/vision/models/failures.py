"""A model that fails on some pictures fails them alone: the rest of the batch is answered. Used where the models are
called, in the stages (in-process models and the model service's clients alike) and in the model service."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .base import ModelLoadError
from .remote import ModelServiceUnavailable

log = logging.getLogger(__name__)

# Not about any one picture: a model that cannot load (or a service that refuses it), a service out of reach.
NOT_ABOUT_THE_ITEM = (ModelLoadError, ModelServiceUnavailable)


@dataclass(frozen=True)
class ModelFailure:
    """What a model raised on one item, in place of its answer."""

    error: str


def is_out_of_memory(error: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError, matched by name so a CPU-only process never imports torch.cuda for it.
    return type(error).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(error)


def described(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip() or 'no details'}"


def answer_each(call: Callable[[list[Any]], Sequence[Any]], items: Sequence[Any]) -> list[Any]:
    """`call` over the items in one batch, an answer per item; where it raises, a `ModelFailure` stands for the
    answers of the items that made it raise. On CUDA out-of-memory the batch is halved and tried again (down to
    single items, then the item fails); on any other error each item is tried alone. A failure that is no item's
    (every item failing, a CUDA fault other than memory, a model that cannot load, a service out of reach) is
    raised: the stage fails and is retried as a whole, as for any fault of the machinery."""
    items = list(items)
    if not items:
        return []
    try:
        return list(call(items))
    except NOT_ABOUT_THE_ITEM:
        raise
    except Exception as error:
        if is_device_fault(error):
            raise
        answers = _each(call, items, error)
        if all(isinstance(answer, ModelFailure) for answer in answers):
            raise
        return answers


def answers_per_item(call: Callable[[list[Any]], Sequence[Any]], items: Sequence[Any]) -> list[Any]:
    """As `answer_each`, but every item's failure is its answer, even when all fail: what the model service answers,
    each request's items perhaps from another run (the run's stage then judges, with `answer_each`)."""
    return _tried(call, list(items)) if items else []


def is_device_fault(error: BaseException) -> bool:
    """A CUDA error other than running out of memory (an illegal memory access, a lost device): the device's, not
    the picture's."""
    return "CUDA error" in str(error) and not is_out_of_memory(error)


def _each(call: Callable[[list[Any]], Sequence[Any]], items: list[Any], error: Exception) -> list[Any]:
    if is_out_of_memory(error):
        _free_device_memory()
        if len(items) == 1:
            return [ModelFailure(f"out of device memory even alone: {described(error)}")]
        half = len(items) // 2
        log.warning("out of device memory on %d items: trying %d and %d", len(items), half, len(items) - half)
        return _tried(call, items[:half]) + _tried(call, items[half:])
    if len(items) == 1:
        return [ModelFailure(described(error))]
    log.warning("a batch of %d items failed (%s): each item alone", len(items), described(error))
    return [answer for item in items for answer in _tried(call, [item])]


def _tried(call: Callable[[list[Any]], Sequence[Any]], items: list[Any]) -> list[Any]:
    try:
        return list(call(items))
    except NOT_ABOUT_THE_ITEM:
        raise
    except Exception as error:  # noqa: BLE001 - a model's failure on some input is that input's answer
        return _each(call, items, error)


def _free_device_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
