"""Says what happened when a run's worker process died. Dagster then fails the run with only "This run has been
marked as failed from outside the execution context" (the code server saw its process exit), which tells a person
neither that the process was killed nor what happens next. This adds both to the run: an event in its log and a
tag in the Runs list."""

import re

import dagster as dg

from .failures import WILL_RETRY_TAG

FAILED_FROM_OUTSIDE = "This run has been marked as failed from outside the execution context"
CRASH_PREFIX = "Run execution process for"  # the code server's own event, with the exit code or signal
FAILURE_TAG = "vision_assets/failure"


def dead_worker_explanation(crash: str | None, will_retry: bool, retry_number: int, max_retries: int) -> str:
    found = re.search(r"terminated by signal \d+ \(\w+\)|exited with code -?\d+", crash or "")
    how = found.group(0) if found else "it exited without saying why"
    cause = "the operating system's OOM killer, a reboot, or someone ending it"
    if will_retry:
        after = (f"Dagster re-executes it from the failed step (retry {retry_number + 1} of {max_retries}); "
                 "nothing to do")
    else:
        after = ("Dagster's run retries are used up (or off): the `failed_image_retry` and `index_repair` sensors "
                 "re-run its failed images after a wait; nothing to do unless they give up (their logs say so)")
    return f"The run's worker process died ({how}: {cause}). {after}."


def make_dead_worker_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.run_failure_sensor(name="dead_worker_explainer", minimum_interval_seconds=minimum_interval_seconds,
                           default_status=dg.DefaultSensorStatus.RUNNING,
                           description="When a run fails because its worker process died, says so in the run's log "
                           "(how it died, and whether it will be retried) and tags it vision_assets/failure.")
    def dead_worker_explainer(context: dg.RunFailureSensorContext):
        run = context.dagster_run
        if not (context.failure_event.message or "").startswith(FAILED_FROM_OUTSIDE):
            return
        instance = context.instance
        crashes = [e.message for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
                   if CRASH_PREFIX in e.message]  # after a "[DagsterApiServer] " prefix
        run = instance.get_run_by_id(run.run_id) or run  # its tags now (Dagster adds will_retry on failure)
        explanation = dead_worker_explanation(
            crashes[-1] if crashes else None, run.tags.get(WILL_RETRY_TAG) == "true",
            int(run.tags.get("dagster/retry_number", "0")), instance.run_retries_max_retries,
        )
        instance.report_engine_event(explanation, run)
        instance.add_run_tags(run.run_id, {FAILURE_TAG: "worker process died"})
        context.log.info(f"run {run.run_id}: {explanation}")

    return dead_worker_explainer
