"""What Dagster says about runs that failed for good: which upload batches they left failed, at which stage, after
how many of the pipeline's own re-runs. Read by the sensors that re-run them and by `vision-assets reindex`.

The cost follows the failures, not the catalogue: a `FailureWatch` reads Dagster's run-failure events after its
cursor and keeps the failed runs that still leave batches Failed; each look re-judges only those runs' batches
against the latest plan and materialization of each stage."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import dagster as dg
from pydantic import Field

from ..keys import PIPELINE_STAGES
from ..vision.chunking import STORAGE_QUERY_KEYS, chunked
from ..vision.cursor import Cursor
from ..vision.retry_budget import FailedBatch

# Dagster sets it on every failed run when run retries are on (its documented tag, spelled out).
WILL_RETRY_TAG = "dagster/will_retry"

ATTEMPT_TAG = "vision_assets/retry_attempt"  # on runs the pipeline launched to re-run failed batches: 1, 2, ...
RETRY_OF_TAG = "vision_assets/retry_of_run"  # the failed run they re-run
RUNS_PER_LOOK = 200  # new failed runs read per sensor tick; the rest on the next ticks


def stage_and_after(stage: str) -> list[dg.AssetKey]:
    """The stage and every stage after it: what re-running an image from that stage materializes."""
    names = [key.to_user_string() for key in PIPELINE_STAGES]
    return PIPELINE_STAGES[names.index(stage):]


def planned_by_stage(instance: dg.DagsterInstance, run_id: str) -> dict[dg.AssetKey, list[str]]:
    """The partitions a run planned to materialize, per stage."""
    planned: dict[dg.AssetKey, dict[str, None]] = {}
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None or event.asset_key not in PIPELINE_STAGES:
            continue
        keys = [event.partition] if event.partition else (
            event.partitions_subset.get_partition_keys() if event.partitions_subset else [])
        planned.setdefault(event.asset_key, {}).update(dict.fromkeys(keys))
    return {stage: list(keys) for stage, keys in planned.items()}


def latest_plans(instance: dg.DagsterInstance, stage: dg.AssetKey, keys: Sequence[str]) -> dict[str, tuple[str, int]]:
    """Each partition's latest plan to materialize `stage`: its run and storage id. (Read from the asset index, not
    the run's own log: on SQLite a run's log numbers its events apart from the index that materializations use.)"""
    latest: dict[str, tuple[str, int]] = {}
    before = None
    while len(latest) < len(keys):
        page = instance.event_log_storage.get_event_records(
            dg.EventRecordsFilter(dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, asset_key=stage,
                                  asset_partitions=list(keys), before_cursor=before),
            limit=2 * len(keys), ascending=False)
        for record in page:  # newest first: a partition's first record is its latest plan
            latest.setdefault(record.partition_key, (record.run_id, record.storage_id))
        if len(page) < 2 * len(keys):
            break
        before = page[-1].storage_id
    return latest


def left_failed(instance: dg.DagsterInstance, record: dg.RunRecord, registered: Collection[str]) -> list[FailedBatch]:
    """The batches this failed run still leaves Failed, each at the first stage it failed in: planned by the run, not
    materialized since, and not planned again by a later run (whose own outcome then counts)."""
    run = record.dagster_run
    ended = record.end_time or record.update_timestamp.timestamp()
    attempt = int(run.tags.get(ATTEMPT_TAG, "0"))
    planned = planned_by_stage(instance, run.run_id)
    found: dict[str, FailedBatch] = {}
    for stage in [s for s in PIPELINE_STAGES if s in planned]:
        undecided = [key for key in planned[stage] if key in registered and key not in found]
        for chunk in chunked(undecided, STORAGE_QUERY_KEYS):
            plans = {key: plan_id for key, (run_id, plan_id) in latest_plans(instance, stage, chunk).items()
                     if run_id == run.run_id}
            done = instance.event_log_storage.get_latest_storage_id_by_partition(
                stage, dg.DagsterEventType.ASSET_MATERIALIZATION, set(plans))
            for key, plan_id in plans.items():
                if done.get(key, 0) < plan_id:
                    found[key] = FailedBatch(key, stage.to_user_string(), run.run_id, attempt, ended)
    return list(found.values())


class FailureCursor(Cursor):
    after: str | None = None  # Dagster's cursor over run-failure events
    runs: list[str] = Field(default_factory=list)  # failed runs that left batches Failed at the last look


class FailureWatch:
    """The Failed batches of the pipeline, kept current from a cursor (a sensor's) instead of re-read whole."""

    def __init__(self, cursor: FailureCursor | None = None):
        cursor = cursor or FailureCursor()
        self.after, self.runs = cursor.after, list(cursor.runs)

    @property
    def cursor(self) -> FailureCursor:
        return FailureCursor(after=self.after, runs=self.runs)

    def look(self, instance: dg.DagsterInstance, registered: Collection[str],
             runs_per_look: int | None = RUNS_PER_LOOK) -> list[FailedBatch]:
        """Every registered batch left Failed by a run that ended FAILURE and that Dagster will not retry itself,
        at the first stage it failed in: the "Failed" partitions of the stages' Partitions views. Runs in
        flight, canceled runs and runs Dagster is about to retry leave nothing here. `runs_per_look=None` reads
        every new failure now (a command); a sensor reads a bounded number each tick."""
        self._read_new_failures(instance, runs_per_look)
        records = {}
        for chunk in chunked(sorted(set(self.runs)), STORAGE_QUERY_KEYS):
            records |= {r.dagster_run.run_id: r for r in instance.get_run_records(dg.RunsFilter(run_ids=list(chunk)))}
        failed: dict[str, FailedBatch] = {}
        still = []
        stages = [key.to_user_string() for key in PIPELINE_STAGES]
        for run_id in self.runs:
            record = records.get(run_id)
            if record is None or record.dagster_run.status != dg.DagsterRunStatus.FAILURE:
                continue  # deleted, or re-marked by a person
            left = left_failed(instance, record, registered)
            if not left:
                continue
            still.append(run_id)
            if record.dagster_run.tags.get(WILL_RETRY_TAG) == "true":
                continue  # Dagster re-executes it: its batches are the retry's until that plans them
            for batch in left:
                known = failed.get(batch.batch)
                if known is None or stages.index(batch.stage) < stages.index(known.stage):
                    failed[batch.batch] = batch
        self.runs = still
        return list(failed.values())

    def _read_new_failures(self, instance: dg.DagsterInstance, runs_per_look: int | None) -> None:
        while True:
            page = instance.fetch_run_status_changes(
                dg.DagsterEventType.RUN_FAILURE, limit=runs_per_look or 1000, cursor=self.after, ascending=True)
            self.runs += [r.run_id for r in page.records if r.run_id not in self.runs]
            self.after = page.cursor if page.records else self.after
            if runs_per_look is not None or not page.has_more:
                return


def failed_batches(instance: dg.DagsterInstance, registered: Collection[str]) -> list[FailedBatch]:
    """Every Failed batch now, read from every failed run (for a command, not a sensor tick)."""
    return FailureWatch().look(instance, registered, runs_per_look=None)
