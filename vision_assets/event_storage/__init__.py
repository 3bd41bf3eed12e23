"""Dagster event log storages that write a batch of events in one transaction.

A run over a range of batches (a backfill) stores a few events per batch and stage (its materialization, its planned
materialization, its check results): thousands for a backfill of the catalogue. Dagster hands such events to
`store_event_batch` when `DAGSTER_EVENT_BATCH_SIZE` is set,
but the open-source storages then store them one by one, and each event opens its own database connection: a new
SQLite engine per shard, or a new Postgres backend process (NullPool). That cost, about 9 ms (SQLite) and 13 ms
(Postgres) per event on a 2-core machine, was most of a run on fast models.

These subclasses keep Dagster's own code for what each event writes (the event row, asset and check tables, tags);
they only make every connection asked for during a batch the batch's one connection, in one transaction per
database, committed when the batch is stored. A batch that fails rolls back whole and Dagster stores its events
again one at a time (`handle_new_event`'s fallback). Configured by `vision-assets dev`'s instance (`sqlite.py`) and
by `deploy/dagster.yaml` (`postgres.py`); they read and write the same tables as Dagster's own classes, so an instance can switch
between them at any time.

They also keep each process's copy of a dynamic partition list, read again only where it changed
(`partition_lists.py`): Dagster lists every key of `batches` about 30 times per run to resolve the run's range,
and the upload sensor reads the `images` registry (a million keys at a million images) every tick.
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from typing import Any

# Events per `store_event_batch` call: Dagster buffers a step's per-partition events up to this many
# (`DAGSTER_EVENT_BATCH_SIZE`, which `vision-assets dev` and the code location set unless it is set already).
EVENT_BATCH_SIZE = 1000


def sqlite_storage(home: str) -> dict:
    """An instance's storage settings (dagster.yaml keys) for SQLite under `home`, in Dagster's own layout (so
    existing instances keep their history), with the batching event log."""
    return {
        "run_storage": {"module": "dagster._core.storage.runs", "class": "SqliteRunStorage",
                        "config": {"base_dir": f"{home}/history/"}},
        "event_log_storage": {"module": "vision_assets.event_storage.sqlite", "class": "BatchingSqliteEventLogStorage",
                              "config": {"base_dir": f"{home}/history/runs/"}},
        "schedule_storage": {"module": "dagster._core.storage.schedules", "class": "SqliteScheduleStorage",
                             "config": {"base_dir": f"{home}/schedules"}},
    }


class BatchConnections(threading.local):
    """Per thread: the open connections of the batch being stored (None when no batch is)."""

    connections: dict[str, Any] | None = None
    stack: ExitStack | None = None
