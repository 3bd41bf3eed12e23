"""One question asked of every image of a batched run, answered twice:
- per image: a partitioned check (`name`) whose result the asset logs for each partition as an evaluation of its
  own run, so the UI's check partitions view shows each image's status and reason, linked to its run. (Dagster
  1.13 attributes a check *step*'s result to no partition in a range run, and stores runless evaluations under a
  unique index that a second result for the same partition violates.) Running the check itself re-reads the
  outcome stored with the image;
- per batch: an in-asset check (`batch_name`) that fails when any image of the run failed, with a table of them.
Neither blocks the run: a failing image stops on its own, the rest of the batch goes on.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import dagster as dg
from pydantic import BaseModel

from ..partitions import images
from ..resources import ImageStore


@dataclass(frozen=True)
class ImageOutcome:
    partition_key: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


Record = TypeVar("Record", bound=BaseModel)


@dataclass(frozen=True)
class PerImageCheck(Generic[Record]):
    asset: dg.AssetKey
    name: str
    batch_name: str
    severity: dg.AssetCheckSeverity
    description: str
    record_file: str  # the stage's per-image record in the results store, which the outcome is judged from
    record_type: type[Record]
    outcome: Callable[[Record], ImageOutcome]

    def stored_outcome(self, image_store: ImageStore, partition_key: str) -> ImageOutcome | None:
        """None: the image never reached this stage (e.g. rejected at validation)."""
        record = image_store.results.read(partition_key, self.record_file, self.record_type)
        return self.outcome(record) if record else None

    @property
    def batch_spec(self) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(self.batch_name, asset=self.asset, blocking=False,
                                 description=f"{self.description} For every image of the run; failures listed.")

    def evaluation(self, outcome: ImageOutcome) -> dg.AssetCheckEvaluation:
        return dg.AssetCheckEvaluation(
            asset_key=self.asset,
            check_name=self.name,
            passed=outcome.passed,
            partition=outcome.partition_key,
            severity=self.severity,
            description=outcome.description,
            metadata=outcome.metadata,
        )

    def log_per_image(self, context: dg.OpExecutionContext, outcomes: Sequence[ImageOutcome]) -> None:
        for outcome in outcomes:
            context.log_event(self.evaluation(outcome))

    def summary(
        self, outcomes: Sequence[ImageOutcome], check_name: str | None = None, **extra_metadata: Any
    ) -> dg.AssetCheckResult:
        failed = [o for o in outcomes if not o.passed]
        rows = [f"| `{o.partition_key}` | {o.description.replace('|', '/')} |" for o in failed]
        return dg.AssetCheckResult(
            check_name=check_name or self.batch_name,
            asset_key=self.asset,
            passed=not failed,
            severity=self.severity,
            description=f"{len(failed)} of {len(outcomes)} images failed" if failed else f"all {len(outcomes)} passed",
            metadata={
                "images": len(outcomes),
                "failed_count": len(failed),
                "failed": {o.partition_key: o.description for o in failed},
                "failed_table": dg.MetadataValue.md("\n".join(["| image | why |", "|---|---|", *rows])),
                **extra_metadata,
            },
        )

    def report(self, context: dg.OpExecutionContext, records: Sequence[Record]) -> dg.AssetCheckResult:
        """From inside the asset: every image's result, then the batch result to yield."""
        outcomes = [self.outcome(record) for record in records]
        self.log_per_image(context, outcomes)
        return self.summary(outcomes)

    def definition(self) -> dg.AssetChecksDefinition:
        check = self

        @dg.asset_check(asset=self.asset, name=self.name, partitions_def=images, blocking=False,
                        description=f"{self.description} One result per image, logged by the asset; running this "
                        "check re-reads the stored outcome.")
        def per_image_check(context: dg.AssetCheckExecutionContext, image_store: ImageStore) -> dg.AssetCheckResult:
            outcomes, not_reached = [], []
            for key in context.partition_keys:
                outcome = check.stored_outcome(image_store, key)
                if outcome is None:  # e.g. rejected at validation: it never reached this stage, nothing to judge
                    not_reached.append(key)
                else:
                    outcomes.append(outcome)
            if not context.has_partition_key:  # a range: Dagster would attribute our one result to no partition
                check.log_per_image(context.op_execution_context, outcomes)
            return check.summary(outcomes, check_name=check.name, not_reached=not_reached)

        return per_image_check
