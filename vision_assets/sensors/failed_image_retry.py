"""Re-runs images whose run failed for good. Dagster's run retries re-execute a failed run a few times at once;
after that (or for a failure they do not retry) its images stay Failed until someone notices. This sensor re-runs
them from the stage that failed, waiting longer each time, a bounded number of times, and then names them in its
log for a person. The index stage's failures are `index_repair`'s (it re-indexes without a model)."""

import hashlib
import json
import time
from itertools import groupby

import dagster as dg

from ..checks.indexing import INDEX_KEY
from ..jobs import process_images
from ..partitions import images
from ..resources import FailedImageRetries, UploadPolicy
from ..vision.retry_budget import FailedImage
from ..vision.storage.registrations import REGISTRATIONS_TAG
from ..vision.upload_tracking import contiguous_batches
from .failures import ATTEMPT_TAG, RETRY_OF_TAG, FailureWatch, stage_and_after
from .upload_sensor import RANGE_END, RANGE_START

HOW_TO_FIX = ("re-run them: select the stage and everything after it in the UI's Lineage, Materialize, and pick "
              "their partitions (or re-execute the run from failure)")


def retry_requests(instance: dg.DagsterInstance, due: list[FailedImage], order: list[str],
                   batch_size: int) -> list[dg.RunRequest]:
    """One run per stage and range of adjacent images, from that stage to the index, tagged with its attempt."""
    requests = []
    by_stage = sorted(due, key=lambda f: f.stage)
    for stage, group in groupby(by_stage, key=lambda f: f.stage):
        failures = {f.partition_key: f for f in group}
        for batch in contiguous_batches(order, failures, batch_size):
            batch_failures = [failures[key] for key in batch]
            attempt = max(f.attempt for f in batch_failures) + 1
            failed_runs = sorted({f.run_id for f in batch_failures})
            identity = "\n".join([stage, str(attempt), *failed_runs, *batch])
            tags = {RANGE_START: batch[0], RANGE_END: batch[-1], "vision_assets/images": str(len(batch)),
                    ATTEMPT_TAG: str(attempt), RETRY_OF_TAG: failed_runs[0]}
            registrations = instance.get_run_by_id(failed_runs[0]).tags.get(REGISTRATIONS_TAG)
            if registrations:  # where ingest finds the objects of these images, as the failed run did
                tags[REGISTRATIONS_TAG] = registrations
            requests.append(dg.RunRequest(
                job_name=process_images.name, asset_selection=stage_and_after(stage),
                run_key=f"failed-image-retry-{hashlib.sha256(identity.encode()).hexdigest()[:20]}", tags=tags,
            ))
    return requests


def make_failed_image_retry_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(name="failed_image_retry", job=process_images, minimum_interval_seconds=minimum_interval_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Re-runs images left Failed by a run that Dagster will not retry (its run retries used up, "
               "or a failure they do not retry), from the stage that failed, after a wait that doubles each time "
               "(VISION_ASSETS_FAILED_IMAGE_RETRY_SECONDS), at most VISION_ASSETS_FAILED_IMAGE_RETRIES times; then "
               "its log names them for a person. Runs it launches carry the tag vision_assets/retry_attempt.")
    def failed_image_retry(context: dg.SensorEvaluationContext, failed_image_retries: FailedImageRetries,
                           upload_policy: UploadPolicy):
        instance = context.instance
        order = instance.get_dynamic_partitions(images.name)
        watch = FailureWatch(json.loads(context.cursor or "{}"))
        failed = [f for f in watch.look(instance, set(order)) if f.stage != INDEX_KEY.to_user_string()]
        cursor = json.dumps(watch.state())
        budget = failed_image_retries.budget
        plan = budget.plan(failed, time.time())
        if plan.exhausted:
            context.log.warning(plan.describe_exhausted(budget.attempts, HOW_TO_FIX))
        if not plan.due:
            waiting = plan.describe_waiting() or "no failed images"
            return dg.SensorResult(skip_reason="; ".join(
                filter(None, [waiting, plan.describe_exhausted(budget.attempts, HOW_TO_FIX)])), cursor=cursor)
        requests = retry_requests(instance, plan.due, order, upload_policy.batch_size)
        stages = sorted({f.stage for f in plan.due})
        context.log.info(f"re-running {len(plan.due)} failed image(s) from {', '.join(stages)} in {len(requests)} "
                         f"run(s); {plan.describe_waiting() or 'none waiting'}")
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return failed_image_retry
