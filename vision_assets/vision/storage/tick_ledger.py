"""What an upload-sensor tick decided about batch keys, written before Dagster stores the tick, so that a tick
evaluated again makes the same batches.

Dagster stores a tick's partitions, then launches its runs, then stores its cursor. A daemon that dies between the
first and the last evaluates the same tick again from the same cursor; keys made from the clock would then be new
ones, and the first evaluation's batches would stay in the UI as Missing for ever, their images registered again in
the second's. So a tick that makes batches first writes down the time and first number its keys use, under a name
made from the cursor it started from (`<results prefix>~ticks/<id>.json`); evaluated again from that cursor,
it reads them back and makes the same keys, and adding the partitions again changes nothing. The next tick, whose
cursor proves the tick was stored, removes the file.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from pydantic import BaseModel

from .object_store import ObjectMissing
from .results_store import TICKS, ResultsStore


class TickBatches(BaseModel):
    registered_at: datetime  # the time in the tick's batch keys
    first: int  # the number of its first batch


def tick_id(cursor: str | None) -> str:
    """The name of a tick: the cursor it started from."""
    return hashlib.sha256((cursor or "").encode()).hexdigest()[:24]


def _key(results: ResultsStore, tick: str) -> str:
    return f"{results.prefix}{TICKS}{tick}.json"


def decided(results: ResultsStore, tick: str) -> TickBatches | None:
    try:
        _, data = results.store.get(_key(results, tick))
    except ObjectMissing:
        return None
    return TickBatches.model_validate_json(data)


def decide(results: ResultsStore, tick: str, batches: TickBatches) -> None:
    results.store.put(_key(results, tick), batches.model_dump_json().encode(), "application/json")


def forget(results: ResultsStore, tick: str) -> None:
    results.store.delete(_key(results, tick))
