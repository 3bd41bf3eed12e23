"""The Dagster internals this project leans on outside its event storage (`event_storage/` holds the rest), in one
adapter so that a Dagster upgrade is checked in one place. Each is used because no public API serves, said below;
`tests/test_dagster_internals.py` compares each with what Dagster's own public path produces, so a change in
Dagster fails a test here instead of a user's run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

# Where an evaluation says which materialization it judged (`AssetCheckEvaluation.target_materialization_data`):
# Dagster exports no public name for it.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData as JudgedMaterialization,
)

# What `define_asset_job` returns (`jobs.pipeline_job`, handed to the sensors): Dagster exports no name for the type.
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition as PipelineJob,
)
from dagster._core.events import DagsterEvent, DagsterEventBatchMetadata, generate_event_batch_id
from dagster._core.execution.context.metadata_logging import AssetMetadataHandle, OutputMetadataAccumulator

# What a check execution record's status says (`instance.event_log_storage.get_asset_check_execution_history`).
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecordStatus as CheckRecordStatus,
)

__all__ = ["CheckRecordStatus", "JudgedMaterialization", "PipelineJob", "log_as_one_batch", "processed_class_config",
           "read_instance_file", "set_partition_metadata"]


def log_as_one_batch(context: dg.AssetExecutionContext, evaluations: Sequence[dg.AssetCheckEvaluation]) -> None:
    """What `context.log_event` does for each evaluation, but marked as one batch, as Dagster marks a step's
    per-partition materializations: with `DAGSTER_EVENT_BATCH_SIZE` set, the instance stores them together (one
    transaction with vision_assets/event_storage) instead of one write, and one connection, each. Dagster has no
    public way to batch events a step logs itself."""
    if not evaluations:
        return
    op_context = context.op_execution_context
    step = op_context._step_execution_context  # noqa: SLF001
    batch, last = generate_event_batch_id(), len(evaluations) - 1
    for index, evaluation in enumerate(evaluations):
        # logged (stored) here; kept, as log_event keeps them, for the step's event stream (in-process results)
        op_context._events.append(DagsterEvent.from_step(  # noqa: SLF001
            dg.DagsterEventType.ASSET_CHECK_EVALUATION, step, evaluation,
            message=f"Asset check '{evaluation.check_name}' on '{evaluation.asset_key.to_user_string()}' "
            f"{'passed' if evaluation.passed else 'did not pass'}. Description: '{evaluation.description}'",
            batch_metadata=DagsterEventBatchMetadata(batch, index == last),
        ))


def set_partition_metadata(context: dg.AssetExecutionContext, by_partition: Mapping[str, dict]) -> None:
    """Each partition's own metadata for the step's materializations, in one step. The public way,
    `context.add_asset_metadata(..., partition_key=)`, lists every registered partition on each call and copies all
    metadata added so far: quadratic in a ranged run's partitions."""
    step = context.op_execution_context._step_execution_context  # noqa: SLF001
    accumulated = step._metadata_accumulator  # noqa: SLF001
    asset = context.assets_def.key
    merged = dict(accumulated.per_output_metadata)
    for partition, metadata in by_partition.items():
        handle = AssetMetadataHandle(asset_key=asset, partition_key=partition)
        merged[handle] = {**merged.get(handle, {}), **metadata}
    step._metadata_accumulator = OutputMetadataAccumulator(per_output_metadata=merged)  # noqa: SLF001


def read_instance_file(folder: str, filename: str) -> Mapping[str, Any]:
    """An instance file read, its schema and rules checked, as `DagsterInstance.from_config` reads it
    (`dagster_instance_config`): no public API checks an instance file without constructing the instance, which for
    a team's instance connects to Postgres. Raises `DagsterInvalidConfigError`."""
    from dagster._core.instance.config import dagster_instance_config

    config, _ = dagster_instance_config(folder, filename)
    return config


def processed_class_config(klass: type, config: Mapping[str, Any] | None) -> Any:
    """A configurable class's config (a storage's, the run launcher's) processed by the class's own `config_type`,
    as `ConfigurableClassData.rehydrate` does before constructing the class; Dagster has no public way to check it
    without constructing the class, which connects to Postgres or Kubernetes. The result's `success`, `value` and
    `errors` say how it went."""
    from dagster._config import process_config, resolve_to_config_type

    return process_config(resolve_to_config_type(klass.config_type()), config or {})
