"""One question asked of every image of a batched run, answered twice, both from inside the stage's asset:
- per image: a partitioned check (`name`). The asset logs one evaluation per image, each pointing at that image's
  materialization from this run, which is what the UI's Checks -> Partitions view counts (Dagster only counts an
  evaluation that targets the partition's latest materialization, so the asset materializes first and judges
  after). Images the stage skipped (rejected upstream) get no evaluation: the run planned the check for them, so
  Dagster shows them as Skipped once the run ends. (A check *step* in a range run would record one result for no
  partition, which is why the check is part of the asset.)
- per batch: an unpartitioned check (`batch_name`) with the run's counts and a table of the images that did not
  pass; this is also where the batch's statistics live.
Neither blocks the run: a failing image stops on its own, the rest of the batch goes on.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

# Where an evaluation says which materialization it judged; Dagster exports no public name for it.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData as JudgedMaterialization,
)
from dagster._core.events import DagsterEvent, DagsterEventBatchMetadata, DagsterEventType, generate_event_batch_id

from ..partitions import images

LOOKUP_CHUNK = 500  # partition keys per storage query (SQLite caps bound parameters)


@dataclass(frozen=True)
class ImageOutcome:
    partition_key: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PerImageCheck:
    asset: dg.AssetKey
    name: str
    batch_name: str
    severity: dg.AssetCheckSeverity
    description: str
    not_passed: str  # how a failed image reads in the batch summary: "rejected", "need review", "failed"

    @property
    def key(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(self.asset, self.name)

    @property
    def specs(self) -> list[dg.AssetCheckSpec]:
        return [
            dg.AssetCheckSpec(self.name, asset=self.asset, partitions_def=images, blocking=False,
                              description=f"{self.description} One result per image; images that never reached "
                              "this stage are Skipped."),
            dg.AssetCheckSpec(self.batch_name, asset=self.asset, blocking=False,
                              description=f"{self.description} For every image of the run, with the run's "
                              "statistics; the images that did not pass are listed."),
        ]

    def evaluation(self, outcome: ImageOutcome, judged: JudgedMaterialization | None) -> dg.AssetCheckEvaluation:
        return dg.AssetCheckEvaluation(
            asset_key=self.asset,
            check_name=self.name,
            passed=outcome.passed,
            partition=outcome.partition_key,
            target_materialization_data=judged,
            severity=self.severity,
            # Every per-image line of the run's log names its image: the UI's log shows an evaluation's metadata
            # (not its description), the terminal and Python logs its description.
            description=f"{outcome.partition_key}: {outcome.description}",
            metadata={"image": outcome.partition_key, **outcome.metadata},
        )

    def summary(
        self, outcomes: Sequence[ImageOutcome], skipped: Mapping[str, str], **batch_metadata: Any
    ) -> dg.AssetCheckResult:
        failed = [o for o in outcomes if not o.passed]
        rows = [f"| `{o.partition_key}` | {o.description.replace('|', '/')} |" for o in failed]
        if failed:
            description = f"{len(failed)} of {len(outcomes)} images {self.not_passed}"
        else:
            description = f"all {len(outcomes)} images passed"
        if skipped:
            description += f"; {len(skipped)} skipped (never reached this stage)"
        return dg.AssetCheckResult(
            check_name=self.batch_name,
            asset_key=self.asset,
            passed=not failed,
            severity=self.severity,
            description=description,
            metadata={
                "images": len(outcomes),
                "failed_count": len(failed),
                "failed": {o.partition_key: o.description for o in failed},
                "failed_table": dg.MetadataValue.md("\n".join(["| image | why |", "|---|---|", *rows])),
                "skipped": dict(skipped),
                **batch_metadata,
            },
        )

    def report(
        self,
        context: dg.AssetExecutionContext,
        outcomes: Sequence[ImageOutcome],
        skipped: Mapping[str, str],
        **batch_metadata: Any,
    ) -> Iterator[dg.Output | dg.AssetCheckResult]:
        """Yield from the asset *after* its MaterializeResult: one evaluation per judged image, then the batch."""
        judged = materializations_of_this_run(context, self.asset, [o.partition_key for o in outcomes])
        unmatched = [o.partition_key for o in outcomes if o.partition_key not in judged]
        if unmatched:  # e.g. another run materialized them meanwhile: that run's result will count instead
            context.log.warning(f"{self.name}: no materialization of this run found for {unmatched[:10]}; their "
                                "results will not show as current")
        log_in_batches(context, [self.evaluation(o, judged.get(o.partition_key)) for o in outcomes])
        if self.key in context.selected_asset_check_keys:
            # The per-image check's own output carries no result: its results are the evaluations above.
            yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(self.key))
        yield self.summary(outcomes, skipped, **batch_metadata)


def rejudge(context: dg.AssetExecutionContext, check: PerImageCheck, outcomes: Sequence[ImageOutcome]) -> list[str]:
    """Judge images again from another asset's step (a reviewer's decision arrived): one evaluation per image,
    pointing at the latest materialization of the check's asset, whichever run made it, so the UI's check view
    shows the new result as current. Returns the images with no materialization to judge (left as they were)."""
    judged = latest_materializations(context.instance, check.asset, [o.partition_key for o in outcomes])
    log_in_batches(context, [check.evaluation(o, judged[o.partition_key]) for o in outcomes if o.partition_key in judged])
    return [o.partition_key for o in outcomes if o.partition_key not in judged]


def latest_materializations(instance: dg.DagsterInstance, asset: dg.AssetKey,
                            partition_keys: Sequence[str]) -> dict[str, JudgedMaterialization]:
    """partition -> its newest materialization; one query per image (reviews arrive a few images at a time), since
    a shared `limit` would let one image's long history crowd out another's."""
    judged: dict[str, JudgedMaterialization] = {}
    for key in partition_keys:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[key]), limit=1).records
        if records:
            judged[key] = JudgedMaterialization(storage_id=records[0].storage_id, run_id=records[0].run_id,
                                                timestamp=records[0].timestamp)
    return judged


def log_in_batches(context: dg.AssetExecutionContext, evaluations: Sequence[dg.AssetCheckEvaluation]) -> None:
    """What `context.log_event` does for each evaluation, but marked as one batch, as Dagster marks a step's
    per-partition materializations: with `DAGSTER_EVENT_BATCH_SIZE` set, the instance stores them together (one
    transaction with vision_assets/event_storage) instead of one write, and one connection, each."""
    op_context = context.op_execution_context
    step = op_context._step_execution_context  # noqa: SLF001 - no public way to batch events
    batch, last = generate_event_batch_id(), len(evaluations) - 1
    for index, evaluation in enumerate(evaluations):
        # logged (stored) here; kept, as log_event keeps them, for the step's event stream (in-process results)
        op_context._events.append(DagsterEvent.from_step(  # noqa: SLF001
            DagsterEventType.ASSET_CHECK_EVALUATION, step, evaluation,
            message=f"Asset check '{evaluation.check_name}' on '{evaluation.asset_key.to_user_string()}' "
            f"{'passed' if evaluation.passed else 'did not pass'}. Description: '{evaluation.description}'",
            batch_metadata=DagsterEventBatchMetadata(batch, index == last),
        ))


def materializations_of_this_run(
    context: dg.AssetExecutionContext, asset: dg.AssetKey, partition_keys: Sequence[str]
) -> dict[str, JudgedMaterialization]:
    """partition -> this run's materialization of it, read back from the instance in a few queries per batch."""
    judged: dict[str, JudgedMaterialization] = {}
    run_id = context.run.run_id
    for start in range(0, len(partition_keys), LOOKUP_CHUNK):
        chunk = partition_keys[start:start + LOOKUP_CHUNK]
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset, asset_partitions=chunk), limit=2 * len(chunk)
        ).records
        for record in records:  # newest first
            if record.run_id == run_id and record.partition_key not in judged:
                judged[record.partition_key] = JudgedMaterialization(
                    storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
                )
    return judged
