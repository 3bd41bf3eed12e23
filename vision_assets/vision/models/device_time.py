"""What the models cost each image: the seconds of every model call, shared among the images whose pictures or crops
were in it (by their count of items), per model. A model in this process is timed by the call's wall time (it has
the device to itself); a model in the model service by the seconds the service reports it computed for these items,
so time spent queued behind other runs' requests is not counted as this image's cost."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def reported_seconds(model: Any) -> float | None:
    """The model service's account of a remote model's compute so far (None: a model in this process)."""
    return getattr(model, "device_seconds", None)


class DeviceTime:
    def __init__(self) -> None:
        self.by_image: dict[str, Counter] = defaultdict(Counter)

    def timed(self, name: str, model: Any, owners: Sequence[str], call: Callable[..., T], *args: Any) -> T:
        """`call(*args)`, a call of `model` over items owned by `owners` (one entry per item), its seconds shared
        out among them."""
        before, started = reported_seconds(model), time.perf_counter()
        result = call(*args)
        after = reported_seconds(model)
        spent = after - before if before is not None and after is not None else time.perf_counter() - started
        if owners:
            share = spent / len(owners)
            for owner in owners:
                self.by_image[owner][name] += share
        return result

    def of(self, image: str) -> dict[str, float]:
        return {name: round(seconds, 4) for name, seconds in sorted(self.by_image.get(image, {}).items())}


def batch_device_seconds(per_image: Iterable[tuple[str, Mapping[str, float]]], batch_of: Mapping[str, str]
                         ) -> dict[str, dict[str, float]]:
    """Per batch, each model's seconds over its images: (image, {model: seconds}) pairs summed."""
    totals: dict[str, Counter] = defaultdict(Counter)
    for image, seconds in per_image:
        totals[batch_of[image]].update(seconds)
    return {batch: {name: round(value, 3) for name, value in sorted(found.items())} for batch, found in totals.items()}
