"""Does Qdrant hold exactly this image's points (per image, ERROR), and still every point of earlier runs
(`index_complete`, ERROR)?"""

import random
from collections.abc import Collection
from dataclasses import dataclass

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from ..partitions import images
from ..vision.index.audit import IndexAudit
from ..vision.records import IndexRecord
from .per_image import LOOKUP_CHUNK, ImageOutcome, PerImageCheck

INDEX_KEY = dg.AssetKey("qdrant_index")


def index_outcome(record: IndexRecord) -> ImageOutcome:
    return ImageOutcome(
        record.partition_key,
        passed=not record.problems,
        description="; ".join(record.problems) or f"image point and {len(record.crop_points)} crop point(s), no strays",
        metadata={"image_point": record.image_point, "crop_points": len(record.crop_points)},
    )


index_consistency = PerImageCheck(
    asset=INDEX_KEY,
    name="indexed",
    batch_name="index_consistent",
    severity=dg.AssetCheckSeverity.ERROR,
    description="Every image and crop of the batch has its point in Qdrant and no other point carries its image id.",
    not_passed="failed",
)


index_completeness = dg.AssetCheckSpec(
    "index_complete",
    asset=INDEX_KEY,
    blocking=False,
    description="Every image the pipeline indexed earlier (its `indexed` check passed) still has its point in Qdrant "
    "(a run checks a random sample of at most 1,000 of them, so its cost does not grow with the catalogue; the "
    "`index_repair` sensor checks all of them every ten minutes). Fails when the index lost points (folder deleted "
    "or restored from an old copy, server wiped, collection prefix changed); the `index_repair` sensor then "
    "re-indexes them from the results store.",
)


def completeness_result(audit: IndexAudit, where: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=index_completeness.name,
        asset_key=INDEX_KEY,
        passed=audit.complete,
        severity=dg.AssetCheckSeverity.ERROR,
        description=audit.describe(where),
        metadata={"indexed_earlier": audit.expected, "sampled_from": audit.sampled_from or audit.expected,
                  "missing_count": len(audit.missing),
                  "missing_examples": audit.missing[:20], "qdrant": where},
    )


@dataclass(frozen=True)
class IndexLedger:
    """What Dagster says about the index, read once: every image in partition order, those whose latest `indexed`
    result passed, those the index stage skipped in a run that succeeded (rejected upstream, or embeddings that
    failed their check: they have no point to have), and those it settled without a point in no run still in
    flight (skipped, or judged failed): re-running those changes nothing, so a repair run may cover them. Images
    whose run failed in the index stage are none of these (see `failed_indexing`)."""

    partitions: list[str]
    indexed: list[str]
    skipped: set[str]
    settled: set[str]


def index_ledger(instance: dg.DagsterInstance) -> IndexLedger:
    infos = instance.event_log_storage.get_asset_check_partition_info([index_consistency.key])
    planned = {i.latest_planned_run_id for i in infos if i.latest_execution_status == AssetCheckExecutionRecordStatus.PLANNED}
    succeeded_runs = set()
    for start in range(0, len(planned), LOOKUP_CHUNK):
        chunk = sorted(planned)[start:start + LOOKUP_CHUNK]
        succeeded_runs |= {run.run_id for run in instance.get_runs(
            dg.RunsFilter(run_ids=chunk, statuses=[dg.DagsterRunStatus.SUCCESS]))}
    passed = {i.partition_key for i in infos if i.latest_execution_status == AssetCheckExecutionRecordStatus.SUCCEEDED}
    skipped = {i.partition_key for i in infos if i.latest_execution_status == AssetCheckExecutionRecordStatus.PLANNED
               and i.latest_planned_run_id in succeeded_runs}
    judged_failed = {i.partition_key for i in infos if i.latest_execution_status == AssetCheckExecutionRecordStatus.FAILED}
    partitions = instance.get_dynamic_partitions(images.name)
    return IndexLedger(
        partitions=partitions,
        indexed=[key for key in partitions if key in passed],
        skipped=skipped,
        settled=skipped | judged_failed,
    )


RUN_AUDIT_SAMPLE = 1000


def sampled_indexed(instance: dg.DagsterInstance, exclude: Collection[str], seed: str,
                    size: int = RUN_AUDIT_SAMPLE) -> tuple[list[str], int | None]:
    """For a run's `index_complete`: (the registered images outside `exclude` whose latest `indexed` check passed,
    or of more than `size`, those among a random sample of `size`; None, or how many it was drawn from). Check
    results are read for the sample only, so a run's audit costs the same with a thousand images or a million. A
    wiped or replaced index is caught by any sample; a loss of a few points is left to the sensor's full audit."""
    partitions = [key for key in instance.get_dynamic_partitions(images.name) if key not in exclude]
    sample = partitions if len(partitions) <= size else random.Random(seed).sample(partitions, size)
    infos = instance.event_log_storage.get_asset_check_partition_info([index_consistency.key], partition_keys=sample)
    passed = {i.partition_key for i in infos if i.latest_execution_status == AssetCheckExecutionRecordStatus.SUCCEEDED}
    return [key for key in sample if key in passed], len(partitions) if len(sample) < len(partitions) else None
