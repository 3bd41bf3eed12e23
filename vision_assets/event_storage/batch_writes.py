"""What a batch of one kind of per-partition event writes, in a few multi-row statements instead of several statements
per event. The rows are Dagster's own (`_event_to_row`, `_store_asset_event_tags`, `_store_asset_event`, the check
execution columns of `_update_asset_check_evaluation`); only their grouping differs:

- materializations and planned materializations: every event row in one INSERT, their tags in one INSERT, and the
  asset's own row updated once, from the batch's last event (what dagster-postgres already does for a batch of
  materializations);
- per-partition check evaluations of a run: every event row in one INSERT and the check execution rows (created
  by the run's planned evaluation) updated by one executemany UPDATE.

Any other event (or a stretch of events that does not match what these paths expect) is stored one at a time as
before, in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from typing import Any

import dagster as dg
import sqlalchemy as db
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable

ASSET_EVENT_KINDS = {dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED}
CHECK_EVALUATION = dg.DagsterEventType.ASSET_CHECK_EVALUATION


class IncompleteBatch(RuntimeError):
    """A check evaluation found no planned execution row to complete: the batch is rolled back and Dagster stores
    its events one at a time (which inserts the row)."""


class BatchWrites:
    """Mixed into a SqlEventLogStorage subclass that provides `_insert_event_rows(rows) -> storage ids` and runs
    `store_event_batch` inside one transaction per database."""

    _cached_tables: set[str]
    _asset_key_index_cols: bool

    # Schema lookups Dagster repeats for every event (a new SQLite engine, or a column inspection, each time).
    # Tables and columns are only ever added, so a positive answer is kept.
    def has_table(self, table_name: str) -> bool:
        cached = self.__dict__.setdefault("_cached_tables", set())
        if table_name in cached:
            return True
        found = super().has_table(table_name)
        if found:
            cached.add(table_name)
        return found

    def _has_asset_key_index_cols_on_connection(self, conn: Any) -> bool:
        if self.__dict__.get("_asset_key_index_cols"):
            return True
        found = super()._has_asset_key_index_cols_on_connection(conn)
        self.__dict__["_asset_key_index_cols"] = found
        return found

    def _insert_event_rows(self, rows: list[dict]) -> list[int]:
        raise NotImplementedError

    def _store_events(self, events: Sequence[dg.EventLogEntry]) -> None:
        # A run's planned events come as one batch, the planned materializations of each asset next to its planned
        # checks: each stretch of one kind is written on its own, in the batch's order.
        for kind, stretch in groupby(events, key=lambda event: event.dagster_event_type):
            stretch = list(stretch)
            if len(stretch) > 1 and kind in ASSET_EVENT_KINDS and _all_have_asset_keys(stretch):
                self._store_asset_events(stretch)
            elif len(stretch) > 1 and kind == CHECK_EVALUATION and _all_partitioned_in_a_run(stretch):
                self._store_check_evaluations(stretch)
            else:
                for event in stretch:
                    self.store_event(event)

    def _store_asset_events(self, events: Sequence[dg.EventLogEntry]) -> None:
        ids = self._insert_event_rows([self._event_to_row(event) for event in events])
        with self.index_transaction() as conn:
            self._store_asset_event_tags(conn, events, ids)
            last_of_asset = {event.dagster_event.asset_key: (event, event_id) for event, event_id in zip(events, ids)}
            for event, event_id in last_of_asset.values():
                self._store_asset_event(conn, event, event_id)

    def _store_check_evaluations(self, events: Sequence[dg.EventLogEntry]) -> None:
        rows = [self._event_to_row(event) for event in events]
        ids = self._insert_event_rows(rows)
        table = AssetCheckExecutionsTable
        update = (
            table.update()
            .where(db.and_(table.c.asset_key == db.bindparam("b_asset_key"),
                           table.c.check_name == db.bindparam("b_check_name"),
                           table.c.run_id == db.bindparam("b_run_id"),
                           table.c.partition == db.bindparam("b_partition")))
            .values(execution_status=db.bindparam("b_status"), evaluation_event=db.bindparam("b_event"),
                    evaluation_event_timestamp=db.bindparam("b_timestamp"),
                    evaluation_event_storage_id=db.bindparam("b_event_id"),
                    materialization_event_storage_id=db.bindparam("b_materialization_id"))
        )
        parameters = []
        for event, row, event_id in zip(events, rows, ids):
            evaluation = event.dagster_event.event_specific_data
            judged = evaluation.target_materialization_data
            parameters.append({
                "b_asset_key": evaluation.asset_key.to_string(), "b_check_name": evaluation.check_name,
                "b_run_id": event.run_id, "b_partition": evaluation.partition,
                "b_status": (AssetCheckExecutionRecordStatus.SUCCEEDED if evaluation.passed
                             else AssetCheckExecutionRecordStatus.FAILED).value,
                "b_event": row["event"], "b_timestamp": row["timestamp"], "b_event_id": event_id,
                "b_materialization_id": judged.storage_id if judged else None,
            })
        with self.index_transaction() as conn:
            updated = conn.execute(update, parameters).rowcount
        if updated != len(parameters):
            raise IncompleteBatch(f"{updated} check execution rows updated for {len(parameters)} evaluations")


def _all_have_asset_keys(events: Sequence[dg.EventLogEntry]) -> bool:
    return all(event.dagster_event.asset_key for event in events)


def _all_partitioned_in_a_run(events: Sequence[dg.EventLogEntry]) -> bool:
    return all(event.run_id and event.dagster_event.event_specific_data.partition for event in events)
