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
    single items, then the item fails); on any other error each item is tried alone."""
    items = list(items)
    if not items:
        return []
    try:
        return list(call(items))
    except NOT_ABOUT_THE_ITEM:
        raise
    except Exception as error:  # noqa: BLE001 - a model's failure on some input is that input's answer
        if is_out_of_memory(error):
            _free_device_memory()
            if len(items) == 1:
                return [ModelFailure(f"out of device memory even alone: {described(error)}")]
            half = len(items) // 2
            log.warning("out of device memory on %d items: trying %d and %d", len(items), half, len(items) - half)
            return answer_each(call, items[:half]) + answer_each(call, items[half:])
        if len(items) == 1:
            return [ModelFailure(described(error))]
        log.warning("a batch of %d items failed (%s): each item alone", len(items), described(error))
        return [answer for item in items for answer in answer_each(call, [item])]


def _free_device_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
