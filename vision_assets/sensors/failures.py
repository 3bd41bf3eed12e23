"""What Dagster says about runs that failed for good: which images they left failed, at which stage, after how many
of the pipeline's own re-runs. Read by the sensors that re-run them and by `vision-assets reindex`."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import dagster as dg
from dagster._core.storage.tags import WILL_RETRY_TAG  # Dagster sets it on every failed run when run retries are on

from ..assets.detections import DETECTIONS_KEY
from ..checks.confidence import LABELS_KEY
from ..checks.embedding import EMBEDDINGS_KEY
from ..checks.indexing import INDEX_KEY
from ..checks.validation import SOURCE_IMAGES
from ..vision.retry_budget import FailedImage

PIPELINE_STAGES = [SOURCE_IMAGES, DETECTIONS_KEY, EMBEDDINGS_KEY, LABELS_KEY, INDEX_KEY]

ATTEMPT_TAG = "vision_assets/retry_attempt"  # on runs the pipeline launched to re-run failed images: 1, 2, ...
RETRY_OF_TAG = "vision_assets/retry_of_run"  # the failed run they re-run
RUN_LOOKUP_CHUNK = 500


def stage_and_after(stage: str) -> list[dg.AssetKey]:
    """The stage and every stage after it: what re-running an image from that stage materializes."""
    names = [key.to_user_string() for key in PIPELINE_STAGES]
    return PIPELINE_STAGES[names.index(stage):]


def failed_images(instance: dg.DagsterInstance, registered: Collection[str],
                  stages: Sequence[dg.AssetKey] = PIPELINE_STAGES) -> list[FailedImage]:
    """Registered images whose latest attempt at one of `stages` (in pipeline order) belongs to a run that ended
    FAILURE and that Dagster will not retry itself, each at the first of those stages it failed in. These are the
    "Failed" partitions of the asset's Partitions view. Runs in flight, canceled runs and runs Dagster is about to
    retry are left alone."""
    storage = instance.event_log_storage
    attempts: dict[str, tuple[dg.AssetKey, str]] = {}
    for stage in stages:
        unfinished = storage.get_latest_asset_partition_materialization_attempts_without_materializations(stage)
        for key, (run_id, _) in unfinished.items():
            if key in registered and key not in attempts:
                attempts[key] = (stage, run_id)
    run_ids = sorted({run_id for _, run_id in attempts.values()})
    records = {}
    for start in range(0, len(run_ids), RUN_LOOKUP_CHUNK):
        chunk = run_ids[start:start + RUN_LOOKUP_CHUNK]
        records |= {r.dagster_run.run_id: r for r in instance.get_run_records(dg.RunsFilter(run_ids=chunk))}
    failed = []
    for key, (stage, run_id) in attempts.items():
        record = records.get(run_id)
        if record is None or record.dagster_run.status != dg.DagsterRunStatus.FAILURE:
            continue
        tags = record.dagster_run.tags
        if tags.get(WILL_RETRY_TAG) == "true":
            continue
        ended = record.end_time or record.update_timestamp.timestamp()
        failed.append(FailedImage(key, stage.to_user_string(), run_id, int(tags.get(ATTEMPT_TAG, "0")), ended))
    return failed
