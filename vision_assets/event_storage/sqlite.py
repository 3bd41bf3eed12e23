"""Dagster's SQLite event log (a database per run plus the cross-run index), a batch in one transaction per file,
and one SQLAlchemy engine per database file instead of one per connection."""

from __future__ import annotations

import threading
from collections import OrderedDict
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

# Engines kept: the cross-run index and the runs a process is writing or reading now (a run process writes to its
# own run's file and the index; the webserver and daemon move between runs).
ENGINES_KEPT = 16


class ShardEngines:
    """One engine per database file, the least recently used disposed beyond `ENGINES_KEPT`.

    Dagster's `_connect` builds a SQLAlchemy engine for every connection it opens and disposes it after: 0.4 ms of
    CPU a connection against 0.1 with the engine kept (bench/run_overhead_bench.py), and a `process_images` run opens
    ~500 (every event stored, every read of the log): 0.15-0.2 s of every run. The engines keep Dagster's `NullPool`:
    each connection is still a new SQLite connection, closed after use, as Dagster's are (nothing is shared between
    threads or survives a fork); only the engine's construction is saved."""

    def __init__(self, conn_string_for_shard):
        self._conn_string_for_shard = conn_string_for_shard
        self._engines: OrderedDict[str, db.engine.Engine] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, shard: str) -> db.engine.Engine:
        with self._lock:
            engine = self._engines.pop(shard, None) or db.create_engine(
                self._conn_string_for_shard(shard), poolclass=NullPool,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
            self._engines[shard] = engine  # the most recently used last
            while len(self._engines) > ENGINES_KEPT:
                self._engines.popitem(last=False)[1].dispose()
            return engine

    def dispose(self) -> None:
        with self._lock:
            while self._engines:
                self._engines.popitem()[1].dispose()


class BatchingSqliteEventLogStorage(
        OnePassCheckStates, CachedPartitionLists, BatchWrites, SqliteEventLogStorage):
    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._batch = BatchConnections()  # first: Dagster's __init__ already connects
        self._engines = ShardEngines(self.conn_string_for_shard)
        super().__init__(base_dir, inst_data)

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Any) -> BatchingSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Any]:
        """Dagster's `_connect` (its process lock, the file's tables made on first use, a transaction per
        connection) on the file's kept engine; during a batch, the batch's one connection to the file."""
        batch = self._batch.connections
        if batch is None:
            with self._db_lock, self._open_shard(shard) as connection:
                yield connection
            return
        if shard not in batch:
            batch[shard] = self._batch.stack.enter_context(self._open_shard(shard))
        yield batch[shard]

    @contextmanager
    def _open_shard(self, shard: str) -> Iterator[Any]:
        """A connection to the shard's file in a transaction, the caller holding Dagster's process lock (a batch
        holds it for its whole length)."""
        engine = self._engines(shard)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        with engine.connect() as connection, connection.begin():
            yield connection

    def dispose(self) -> None:
        super().dispose()
        self._engines.dispose()

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
