"""Dagster's SQLite event log (a database per run plus the cross-run index), a batch in one transaction per file."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import dagster as dg
import sqlalchemy as db
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SQLITE_BUSY_TIMEOUT_SECONDS, SqliteEventLogStorage
from dagster._serdes import ConfigurableClassData
from sqlalchemy.pool import NullPool

from . import BatchConnections
from .batch_writes import BatchWrites
from .check_states import OnePassCheckStates
from .partition_lists import CachedPartitionLists


class BatchingSqliteEventLogStorage(
        OnePassCheckStates, CachedPartitionLists, BatchWrites, SqliteEventLogStorage):
    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._batch = BatchConnections()  # first: Dagster's __init__ already connects
        super().__init__(base_dir, inst_data)

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Any) -> BatchingSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Any]:
        batch = self._batch.connections
        if batch is None:
            with super()._connect(shard) as connection:
                yield connection
            return
        if shard not in batch:
            batch[shard] = self._batch.stack.enter_context(self._open_shard(shard))
        yield batch[shard]

    @contextmanager
    def _open_shard(self, shard: str) -> Iterator[Any]:
        """Dagster's `_connect` without taking its process lock: the batch holds that lock for its whole length."""
        engine = db.create_engine(self.conn_string_for_shard(shard), poolclass=NullPool,
                                  connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
        try:
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as connection, connection.begin():
                yield connection
        finally:
            engine.dispose()

    def store_event_batch(self, events: Sequence[dg.EventLogEntry]) -> None:
        with self._db_lock, ExitStack() as stack:
            self._batch.connections, self._batch.stack = {}, stack
            try:
                self._store_events(events)
            finally:
                self._batch.connections, self._batch.stack = None, None

    def _insert_event_rows(self, rows: list[dict]) -> list[int]:
        """Into each run's own database, and into the cross-run index, whose ids are the events' storage ids."""
        for run_id in dict.fromkeys(row["run_id"] for row in rows):
            with self.run_connection(run_id) as conn:
                conn.execute(SqlEventLogStorageTable.insert(), [row for row in rows if row["run_id"] == run_id])
        with self.index_connection() as conn:
            inserted = conn.execute(
                SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id, sort_by_parameter_order=True),
                rows)
            return [row[0] for row in inserted]
