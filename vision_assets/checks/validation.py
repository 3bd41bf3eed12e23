"""Validation checks on `source_images`.

Dagster 1.13 attributes a check result to a partition only in single-partition runs, while our runs cover a
range of images. So there are two views of one question:
- `image_valid`, partitioned: one result per image, logged by the asset as check evaluations of its own run, one per
  partition (correct per-partition status in the UI's check partitions view, linked to the run that produced it).
  Not runless events: Dagster 1.13 stores those with an empty run id under a unique index, so a second runless
  result for the same partition (a re-upload, a backfill) fails;
- `images_valid`, the batch view emitted by the asset itself: fails when any image of the run was rejected and
  lists them with their reasons in its metadata.
Neither blocks: a rejected image stops on its own (later stages skip it) while the rest of its batch goes on.
"""

from collections.abc import Sequence
from typing import Any

import dagster as dg

from ..partitions import images
from ..resources import ImageStore
from ..vision.records import SourceImageRecord

SOURCE_IMAGES = dg.AssetKey("source_images")
PER_IMAGE_CHECK = "image_valid"
BATCH_CHECK = "images_valid"

batch_check_spec = dg.AssetCheckSpec(
    BATCH_CHECK,
    asset=SOURCE_IMAGES,
    blocking=False,
    description="Every image of the run decoded and passed the limits. Failing images are listed in the metadata; "
    "they go no further, the rest of the batch does.",
)


def image_check_evaluation(record: SourceImageRecord) -> dg.AssetCheckEvaluation:
    metadata: dict[str, Any] = {"source_uri": record.source_uri}
    if record.rejection:
        metadata |= {"reason": record.rejection.code.value, "message": record.rejection.message}
    else:
        metadata |= {"width": record.facts.width, "height": record.facts.height, "format": record.facts.format}
    return dg.AssetCheckEvaluation(
        asset_key=SOURCE_IMAGES,
        check_name=PER_IMAGE_CHECK,
        passed=record.is_valid,
        partition=record.partition_key,
        severity=dg.AssetCheckSeverity.ERROR,
        description=record.rejection.message if record.rejection else "valid image",
        metadata=metadata,
    )


def log_per_image_checks(context: dg.OpExecutionContext, records: Sequence[SourceImageRecord]) -> None:
    for record in records:
        context.log_event(image_check_evaluation(record))


def rejected_table(records: Sequence[SourceImageRecord]) -> str:
    rows = [
        f"| `{r.partition_key}` | {r.rejection.code.value} | {r.rejection.message.replace('|', '/')} |"
        for r in records
        if r.rejection
    ]
    return "\n".join(["| image | reason | details |", "|---|---|---|", *rows])


def batch_check_result(records: Sequence[SourceImageRecord], check_name: str = BATCH_CHECK) -> dg.AssetCheckResult:
    rejected = [r for r in records if not r.is_valid]
    return dg.AssetCheckResult(
        check_name=check_name,
        asset_key=SOURCE_IMAGES,
        passed=not rejected,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{len(rejected)} of {len(records)} images rejected" if rejected else f"all {len(records)} valid",
        metadata={
            "images": len(records),
            "rejected_count": len(rejected),
            "rejected": {r.partition_key: f"{r.rejection.code.value}: {r.rejection.message}" for r in rejected},
            "rejected_table": dg.MetadataValue.md(rejected_table(rejected)),
        },
    )


@dg.asset_check(
    asset=SOURCE_IMAGES,
    name=PER_IMAGE_CHECK,
    partitions_def=images,
    blocking=False,
    description="This image decoded and passed the limits; if not, the reason. Reported per image by "
    "`source_images` itself; running this check again re-reads the stored outcome.",
)
def image_valid(context: dg.AssetCheckExecutionContext, image_store: ImageStore) -> dg.AssetCheckResult:
    results = image_store.results
    records = []
    for key in context.partition_keys:
        record = results.read_source_record(key)
        if record is None:
            raise dg.Failure(f"no stored outcome for {key!r}: materialize source_images for it first")
        records.append(record)
    if not context.has_partition_key:  # a range: Dagster would attribute our one result to no partition
        log_per_image_checks(context.op_execution_context, records)
    return batch_check_result(records, check_name=PER_IMAGE_CHECK)
