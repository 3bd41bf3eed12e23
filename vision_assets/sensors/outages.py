"""A sensor tick that cannot reach what it reads (the bucket, the events queue, Qdrant, the model service) says so in
one line and skips, instead of failing with a stack trace: an outage is not a bug, and a person reading the sensor's
ticks in the UI should tell them apart at a glance (a skipped tick that names what is out of reach and since when,
against a failed tick with its trace). The tick's cursor is not moved, so the next tick tries the same work again;
anything else a sensor raises is still a failure."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from ..vision.index.connection import IndexUnavailable
from ..vision.models.remote import ModelServiceUnavailable
from ..vision.storage.object_store import StoreUnavailable

OUT_OF_REACH = (StoreUnavailable, IndexUnavailable, ModelServiceUnavailable)
REASON_CHARACTERS = 300  # botocore's messages can run long; the line stays a line

_last_success: dict[str, float] = {}  # per sensor, in this process (the code server evaluates every tick)
_process_started = time.time()


def outages_skip_the_tick(sensor: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a sensor's evaluation function (under `@dg.sensor`: its signature, resources included, is kept)."""

    name = sensor.__name__  # the sensor's (each is named as its function)

    @functools.wraps(sensor)
    def evaluated(context: dg.SensorEvaluationContext, *args: Any, **resources: Any) -> Any:
        try:
            result = sensor(context, *args, **resources)
        except OUT_OF_REACH as error:
            return dg.SkipReason(outage_line(error, resources, _last_success.get(name)))
        _last_success[name] = time.time()
        return result

    return evaluated


def outage_line(error: BaseException, resources: dict[str, Any], last_success: float | None) -> str:
    """`S3 unreachable at <where>: waiting; last success <when> (<why>)`."""
    if isinstance(error, IndexUnavailable):
        what = f"Qdrant unreachable at {resources['qdrant'].where}" if "qdrant" in resources else "Qdrant unreachable"
    elif isinstance(error, ModelServiceUnavailable):
        what = "the model service unreachable"
    else:
        what = (f"{resources['image_store'].kind} unreachable at {resources['image_store'].where}"
                if "image_store" in resources else "the store unreachable")
    why = " ".join(str(error).split())
    if len(why) > REASON_CHARACTERS:
        why = why[:REASON_CHARACTERS] + "..."
    return f"{what[0].upper()}{what[1:]}: waiting; last success {_when(last_success)} ({why})"


def _when(moment: float | None) -> str:
    if moment is None:
        started = datetime.fromtimestamp(_process_started, UTC).isoformat(timespec="seconds")
        return f"none since this code server started at {started}"
    ago = time.time() - moment
    at = datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")
    return f"{at} ({_duration(ago)} ago)"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
