"""Re-runs batches whose run failed for good. Dagster's run retries re-execute a failed run a few times at once;
after that (or for a failure they do not retry) its batches stay Failed until someone notices. This sensor re-runs
them from the stage that failed, waiting longer each time, a bounded number of times, and then names them in its
log for a person. The index stage's failures are `index_repair`'s (it re-indexes without a model)."""

import time
from itertools import groupby
from typing import TYPE_CHECKING

import dagster as dg

from ..jobs import PROCESS_IMAGES
from ..keys import QDRANT_INDEX
from ..partitions import batches
from ..resources import FailedImageRetries
from ..vision.retry_budget import FailedBatch
from ..vision.upload_tracking import contiguous_batches
from .failures import ATTEMPT_TAG, RETRY_OF_TAG, FailureCursor, FailureWatch, stage_and_after
from .run_keys import run_key

if TYPE_CHECKING:
    from ..dagster_internals import PipelineJob

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
BATCHES_PER_RETRY = 4  # adjacent failed batches re-run together
HOW_TO_FIX = ("re-run them: select the stage and everything after it in the UI's Lineage, Materialize, and pick "
              "their batches (or re-execute the run from failure)")


def range_tags(first: str, last: str) -> dict[str, str]:
    return {RANGE_START: first, RANGE_END: last}


def retry_requests(due: list[FailedBatch], order: list[str]) -> list[dg.RunRequest]:
    """One run per stage and range of adjacent batches, from that stage to the index, tagged with its attempt."""
    requests = []
    by_stage = sorted(due, key=lambda f: f.stage)
    for stage, group in groupby(by_stage, key=lambda f: f.stage):
        failures = {f.batch: f for f in group}
        for run in contiguous_batches(order, failures, BATCHES_PER_RETRY):
            run_failures = [failures[key] for key in run]
            attempt = max(f.attempt for f in run_failures) + 1
            failed_runs = sorted({f.run_id for f in run_failures})
            tags = range_tags(run[0], run[-1]) | {ATTEMPT_TAG: str(attempt), RETRY_OF_TAG: failed_runs[0]}
            requests.append(dg.RunRequest(
                job_name=PROCESS_IMAGES, asset_selection=stage_and_after(stage),
                run_key=run_key("failed-image-retry", stage, str(attempt), *failed_runs, *run), tags=tags,
            ))
    return requests


def make_failed_image_retry_sensor(pipeline: "PipelineJob",
                                   minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(name="failed_image_retry", job=pipeline, minimum_interval_seconds=minimum_interval_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Re-runs batches left Failed by a run that Dagster will not retry (its run retries used "
               "up, or a failure they do not retry), from the stage that failed, after a wait that doubles each time "
               "(VISION_ASSETS_FAILED_IMAGE_RETRY_SECONDS), at most VISION_ASSETS_FAILED_IMAGE_RETRIES times; then "
               "its log names them for a person. Runs it launches carry the tag vision_assets/retry_attempt.")
    def failed_image_retry(context: dg.SensorEvaluationContext, failed_image_retries: FailedImageRetries):
        instance = context.instance
        order = instance.get_dynamic_partitions(batches.name)
        watch = FailureWatch(FailureCursor.parse(context.cursor))
        failed = [f for f in watch.look(instance, set(order)) if f.stage != QDRANT_INDEX.to_user_string()]
        cursor = watch.cursor.dump()
        budget = failed_image_retries.budget
        plan = budget.plan(failed, time.time())
        if plan.exhausted:
            context.log.warning(plan.describe_exhausted(budget.attempts, HOW_TO_FIX))
        if not plan.due:
            waiting = plan.describe_waiting() or "no failed batches"
            return dg.SensorResult(skip_reason="; ".join(
                filter(None, [waiting, plan.describe_exhausted(budget.attempts, HOW_TO_FIX)])), cursor=cursor)
        requests = retry_requests(plan.due, order)
        stages = sorted({f.stage for f in plan.due})
        context.log.info(f"re-running {len(plan.due)} failed batch(es) from {', '.join(stages)} in {len(requests)} "
                         f"run(s); {plan.describe_waiting() or 'none waiting'}")
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return failed_image_retry
