"""A step stranded on a pool with free slots is assigned again, and the sensor says so.

Dagster's op concurrency (its `sql_event_log.claim_concurrency_slot`) registers a step that wants a pool slot in two
moves: it asks whether the pool has an unassigned slot, then inserts the step's pending row, assigned or not by that
answer. A step that frees the pool's last slot between the two moves assigns the next pending step, finds none
(the new row is not there yet), and nothing assigns the new row later: Dagster assigns pending steps only when a slot
is freed. The step then waits for ever, "blocked by limit for pool qdrant", with the slot free (seen in a full suite
run: more than 3 minutes, until the run's own timeout). No setting avoids it short of run-level pools (which would
let one run at a time into the `qdrant` pool for its whole duration), so this sensor looks each minute for steps of
runs in progress that have waited unassigned for `STRANDED_AFTER_SECONDS` while their pool has a free slot, and
assigns them with the storage's own `assign_pending_steps`, the call Dagster makes when a slot is freed.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

STRANDED_AFTER_SECONDS = 120
IN_PROGRESS = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}


def free_slots(info) -> int:
    """Slots of the pool that no step holds or has been given."""
    busy = {(slot.run_id, slot.step_key) for slot in info.claimed_slots}
    busy |= {(step.run_id, step.step_key) for step in info.pending_steps if step.assigned_timestamp is not None}
    return max(0, info.slot_count - len(busy))


def stranded(info, now: datetime, after_seconds: float) -> list:
    """The pool's steps waiting unassigned for longer than `after_seconds`, oldest first."""
    waiting = [step for step in info.pending_steps if step.assigned_timestamp is None
               and (now - step.enqueued_timestamp).total_seconds() > after_seconds]
    return sorted(waiting, key=lambda step: step.enqueued_timestamp)


def make_stranded_step_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(name="stranded_steps", minimum_interval_seconds=max(60, minimum_interval_seconds),
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Finds steps that have waited more than two minutes for a pool (`gpu`, `qdrant`) with a "
               "free slot, which Dagster's op concurrency can leave unassigned when a slot is freed at the moment "
               "they register, and assigns them; the tick's log names each.")
    def stranded_steps(context: dg.SensorEvaluationContext):
        storage = context.instance.event_log_storage
        now, said = datetime.now(UTC), []
        for pool in sorted(storage.get_concurrency_keys()):
            info = storage.get_concurrency_info(pool)
            free = free_slots(info)
            waiting = [step for step in stranded(info, now, STRANDED_AFTER_SECONDS) if _in_progress(context.instance, step.run_id)]
            for step in waiting[:free]:
                storage.assign_pending_steps([pool])
                minutes = (now - step.enqueued_timestamp).total_seconds() / 60
                said.append(f"step {step.step_key} of run {step.run_id} waited {minutes:.0f} min for pool {pool} "
                            f"with {free} free slot(s): assigned again")
        if not said:
            return dg.SkipReason("no step is waiting on a pool with a free slot")
        for line in said:
            context.log.warning(line)
        return dg.SkipReason("; ".join(said))

    return stranded_steps


def _in_progress(instance: dg.DagsterInstance, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    return run is not None and run.status in IN_PROGRESS
