"""The process set up before Dagster or a model library does anything, in one call. Where a process starts: the code
location (`definitions.py`) and the CLI's `main`. What it changes about the process is in `vision/process.py`."""

from __future__ import annotations

import os

from .event_storage import EVENT_BATCH_SIZE
from .vision.process import keep_pillow_blocks, quiet_libraries


def bootstrap() -> None:
    """Idempotent; values already in the environment win."""
    # A run's per-image events (materializations, check results) reach the event log in batches of this many, which
    # the instance's storage writes in one transaction (event_storage/). Dagster reads it at every event, so setting
    # it in the code location covers every process that loads it: run workers, tests, benches.
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", str(EVENT_BATCH_SIZE))
    quiet_libraries(offline=False)
    keep_pillow_blocks()
