"""A partitioned check's statuses per partition (the UI's check Partitions tab), built in one pass.

Dagster's open-source storages rebuild this state on every request (`EventLogStorage.get_asset_check_state`, from
an empty checkpoint) one check result at a time: each result asks the database whether its partition still exists
(`has_dynamic_partition`: a connection and a query) and unions that one key into its status's set (a copy of the
set). At 10,000 per-image results that was 11.5 s per view, growing with the catalogue; the UI gives up long before
100,000. Here the same records (Dagster's own query, `get_asset_check_partition_info`) are judged against the
partition list read once (the cached list of `partition_lists.py`) and gathered into one set per status, and the
runs still in progress are settled by Dagster's own code (`AssetCheckState.with_updates` with no records). For a
fresh state that is Dagster's result exactly (each record is one partition's latest, so the order of Dagster's
unions does not matter); `tests/test_event_storage.py` compares the two. Checks over other partitions definitions
are left to Dagster.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from dagster import AssetCheckKey, DagsterRunStatus, DynamicPartitionsDefinition, PartitionsDefinition, RunsFilter
from dagster._core.asset_graph_view.serializable_entity_subset import SerializableEntitySubset
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus,
    AssetCheckExecutionResolvedStatus,
    AssetCheckPartitionInfo,
)
from dagster._core.storage.asset_check_state import AssetCheckState

# Runs that will log nothing more (Dagster's FINISHED_STATUSES, spelled out).
FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
STATUS_OF_RESULT = {AssetCheckExecutionRecordStatus.SUCCEEDED: AssetCheckExecutionResolvedStatus.SUCCEEDED,
                    AssetCheckExecutionRecordStatus.FAILED: AssetCheckExecutionResolvedStatus.FAILED}


class OnePassCheckStates:
    """Mixed into a SqlEventLogStorage subclass (before it, so this `get_asset_check_state` is the one called)."""

    def get_asset_check_state(
        self, keys: Sequence[tuple[AssetCheckKey, PartitionsDefinition | None]]
    ) -> Mapping[AssetCheckKey, AssetCheckState]:
        keys = list(keys)
        if not all(_named_dynamic(partitions_def) for _, partitions_def in keys):
            return super().get_asset_check_state(keys)
        check_keys = [key for key, _ in keys]
        infos: dict[AssetCheckKey, list[AssetCheckPartitionInfo]] = defaultdict(list)
        for info in self.get_asset_check_partition_info(check_keys):
            infos[info.check_key].append(info)
        registered = {name: set(self.get_dynamic_partitions(name)) for name in {d.name for _, d in keys}}
        states = {key: _gathered(key, partitions_def, infos[key], registered[partitions_def.name])
                  for key, partitions_def in keys}
        run_ids = {run_id for state in states.values() for run_id in state.in_progress_runs}
        finished = {run.run_id: run.status for run in self._instance.get_runs(
            filters=RunsFilter(run_ids=sorted(run_ids), statuses=FINISHED))} if run_ids else {}
        partitions_defs = dict(keys)
        return {key: state.with_updates(key, partitions_defs[key], [], finished) for key, state in states.items()}


def _named_dynamic(partitions_def: PartitionsDefinition | None) -> bool:
    return isinstance(partitions_def, DynamicPartitionsDefinition) and partitions_def.name is not None


def _gathered(key: AssetCheckKey, partitions_def: DynamicPartitionsDefinition,
              infos: Sequence[AssetCheckPartitionInfo], existing: set[str]) -> AssetCheckState:
    """Every partition's latest record, judged as Dagster's `_process_partition_records` judges it from an empty
    state: planned -> in progress (and its run), a result on the latest materialization -> its status, a result on
    an older one -> no status; partitions no longer registered are left out."""
    by_status: dict[AssetCheckExecutionResolvedStatus, list[str]] = defaultdict(list)
    by_run: dict[str, list[str]] = defaultdict(list)
    for info in infos:
        if info.partition_key not in existing:
            continue
        if info.latest_execution_status == AssetCheckExecutionRecordStatus.PLANNED:
            by_status[AssetCheckExecutionResolvedStatus.IN_PROGRESS].append(info.partition_key)
            by_run[info.latest_planned_run_id].append(info.partition_key)
        elif info.latest_execution_status in STATUS_OF_RESULT and info.is_current:
            by_status[STATUS_OF_RESULT[info.latest_execution_status]].append(info.partition_key)

    def subset(partition_keys: list[str]) -> SerializableEntitySubset[AssetCheckKey]:
        return SerializableEntitySubset(key=key, value=partitions_def.subset_with_partition_keys(partition_keys))

    latest = max((max(info.latest_check_event_storage_id, info.latest_materialization_storage_id or 0)
                  for info in infos), default=0)
    return AssetCheckState(latest_storage_id=latest,
                           subsets={status: subset(by_status[status]) for status in AssetCheckExecutionResolvedStatus},
                           in_progress_runs={run_id: subset(partition_keys) for run_id, partition_keys in by_run.items()})
