"""dagster-postgres's event log, a batch on one connection in one transaction (instead of a new connection, hence
a new Postgres backend process, per event). Needs the `postgres` extra."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import dagster as dg
from dagster._core.storage.event_log.schema import SqlEventLogStorageTable
from dagster._serdes import ConfigurableClassData
from dagster_postgres.event_log.event_log import PostgresEventLogStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_url_from_config

from . import BatchConnections
from .batch_writes import BatchWrites
from .check_states import OnePassCheckStates
from .partition_lists import CachedPartitionLists

POOL_RECYCLE_SECONDS = 3600  # a connection idle past a server or proxy timeout is replaced, not used dead


class BatchingPostgresEventLogStorage(
        OnePassCheckStates, CachedPartitionLists, BatchWrites, PostgresEventLogStorage):
    def __init__(self, *args: Any, **kwargs: Any):
        self._batch = BatchConnections()  # first: dagster-postgres's __init__ already connects
        super().__init__(*args, **kwargs)
        # dagster-postgres opens a new connection (a new backend process, ~10 ms here) for every event and query
        # outside a batch; one kept open per process, as dagster-webserver's own storage does, avoids that.
        self._engine = create_pg_engine(self.postgres_url, self._token_provider, isolation_level="AUTOCOMMIT",
                                        pool_size=1, max_overflow=8, pool_recycle=POOL_RECYCLE_SECONDS,
                                        pool_pre_ping=True)

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> BatchingPostgresEventLogStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )

    @contextmanager
    def _connect(self) -> Iterator[Any]:
        batch = self._batch.connections
        if batch is None:
            with super()._connect() as connection:
                yield connection
            return
        yield batch["postgres"]

    def store_event_batch(self, events: Sequence[dg.EventLogEntry]) -> None:
        with ExitStack() as stack:
            connection = stack.enter_context(super()._connect())
            connection = connection.execution_options(isolation_level="READ COMMITTED")
            stack.enter_context(connection.begin())
            self._batch.connections, self._batch.stack = {"postgres": connection}, stack
            try:
                self._store_events(events)
            finally:
                self._batch.connections, self._batch.stack = None, None

    def _insert_event_rows(self, rows: list[dict]) -> list[int]:
        with self._connect() as conn:
            inserted = conn.execute(
                SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id, sort_by_parameter_order=True),
                rows)
            return [row[0] for row in inserted]
