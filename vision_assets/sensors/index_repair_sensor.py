"""Puts back what the index lost. When `index_complete` failed (a run found earlier images without points), and
every ten minutes anyway (the index can lose points while no run happens), it compares Qdrant with what the
pipeline indexed (the per-batch ledger) and launches `reindex` runs for the batches with gaps: no model, no person.
An audit covers 200 batches a tick, so at a million images (about 4,000 batches) it spans 20 ticks.
Batches whose index stage failed for good (a run killed or out of retries mid-way leaves some of their points
written and some not) are re-indexed too, on the same budget as `failed_image_retry` (waits that double, a cap), by
runs that also send their callbacks; those are looked for at every tick, which costs what the failures cost."""

import time
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from ..assets.qdrant_index import index_completeness
from ..dagster_internals import CheckRecordStatus
from ..jobs import reindex
from ..keys import QDRANT_INDEX
from ..partitions import batches
from ..resources import FailedImageRetries, ImageStore, QdrantResource
from ..vision.batches import is_newer
from ..vision.cursor import Cursor
from ..vision.index.audit import audit_index, repair_ranges
from ..vision.index.connection import IndexUnavailable
from ..vision.index.ledger import IndexLedger, index_ledger
from ..vision.retry_budget import FailedBatch
from .failed_image_retry import range_tags, retry_requests
from .failures import FailureCursor, FailureWatch, failed_batches
from .outages import outages_skip_the_tick

if TYPE_CHECKING:
    from ..dagster_internals import PipelineJob

HOW_TO_FIX = "run `vision-assets reindex` (it re-indexes them and says which still fail)"
AUDIT_EVERY_SECONDS = 600  # from the end of one audit to the start of the next
AUDIT_BATCHES_PER_TICK = 200  # about 51,000 images: a few seconds of a tick, whatever the catalogue's size
LOCK_WAIT_SECONDS = 10.0  # a sensor tick must end well inside Dagster's 60 s; a busy index waits for the next tick
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def failed_indexing(instance: dg.DagsterInstance, order: list[str]) -> list[FailedBatch]:
    """Batches whose first failed stage is the index (an earlier failed stage is `failed_image_retry`'s)."""
    return [f for f in failed_batches(instance, set(order)) if f.stage == QDRANT_INDEX.to_user_string()]


def repair_requests(ledger: IndexLedger, missing: list[str], audit_number: int) -> list[dg.RunRequest]:
    ranges = repair_ranges(ledger.batches, ledger.batches_of(missing), ())
    return [dg.RunRequest(job_name=reindex.name, run_key=f"index-repair-{audit_number}-{first}-{last}",
                          tags=range_tags(first, last)) for first, last in ranges]


class IndexRepairCursor(Cursor):
    failures: FailureCursor = Field(default_factory=FailureCursor)
    audits: int = 0  # audits begun so far (their numbers are in the repair runs' keys)
    audited_at: float = 0.0  # when the last audit ended
    handled: int | None = None  # the failed index_complete result the last audit answered
    # An audit in progress: it covers AUDIT_BATCHES_PER_TICK batches a tick, in registration order, and goes on
    # after this batch ("" = from the first). None: no audit in progress.
    audit_after: str | None = None
    audit_checked: int = 0  # images looked up so far in the audit in progress


def audit_when_due(context: dg.SensorEvaluationContext, image_store: ImageStore, qdrant: QdrantResource,
                   state: IndexRepairCursor, order: list[str],
                   retried: set[str]) -> tuple[str, list[dg.RunRequest]]:
    """When due, compare Qdrant with what the ledger says is indexed, a slice of batches per tick (so a tick costs
    the same at a thousand images or a million): what it says, and the reindex runs it needs."""
    instance = context.instance
    if state.audit_after is None:
        [latest] = instance.event_log_storage.get_asset_check_execution_history(index_completeness.key,
                                                                                limit=1) or [None]
        newly_failed = (latest is not None and latest.status == CheckRecordStatus.FAILED
                        and latest.id != state.handled)
        if not newly_failed and time.time() - state.audited_at < AUDIT_EVERY_SECONDS:
            return "index_complete has not failed since the last audit", []
        if instance.get_run_records(dg.RunsFilter(job_name=reindex.name, statuses=IN_FLIGHT), limit=1):
            return "a reindex run is in flight; auditing after it", []
        state.audits, state.audit_after, state.audit_checked = state.audits + 1, "", 0
        state.handled = latest.id if latest else None
    batch_slice, rest = next_slice(order, state.audit_after, AUDIT_BATCHES_PER_TICK)
    ledger = index_ledger(image_store.results, batch_slice)
    try:
        with qdrant.open(wait_seconds=LOCK_WAIT_SECONDS) as index:
            found = audit_index(index, ledger.indexed)
    except IndexUnavailable as error:
        return f"{error}; auditing on the next tick", []
    state.audit_checked += found.expected
    where = f"audit {state.audits}: {len(order) - rest:,} of {len(order):,} batches, {qdrant.where}"
    if rest:
        state.audit_after = batch_slice[-1]
    else:
        state.audit_after, state.audited_at = None, time.time()
        where += f", {state.audit_checked:,} images looked up: complete"
    missing = [key for key in found.missing if key not in retried]
    if not missing:
        return found.describe(where), []
    context.log.warning(found.describe(where))
    return "", repair_requests(ledger, missing, state.audits)


def next_slice(order: list[str], after: str, size: int) -> tuple[list[str], int]:
    """The `size` batches after `after` in registration order ("" = from the first; a batch deleted since resumes
    at the first batch registered after it), and how many batches follow them."""
    if not after:
        start = 0
    elif after in order:
        start = order.index(after) + 1
    else:
        start = next((i for i, batch in enumerate(order) if is_newer(batch, after)), len(order))
    return order[start:start + size], max(0, len(order) - start - size)


def make_index_repair_sensor(pipeline: "PipelineJob",
                             minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(name="index_repair", jobs=[reindex, pipeline], minimum_interval_seconds=minimum_interval_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Re-indexes the batches of images that the pipeline indexed but Qdrant no longer holds "
               "(after `index_complete` fails, and every ten minutes), through the `reindex` job; and batches whose "
               "`qdrant_index` failed for good, with the budget of `failed_image_retry`.")
    @outages_skip_the_tick
    def index_repair(context: dg.SensorEvaluationContext, image_store: ImageStore, qdrant: QdrantResource,
                     failed_image_retries: FailedImageRetries):
        instance = context.instance
        state = IndexRepairCursor.parse(context.cursor)
        order = instance.get_dynamic_partitions(batches.name)
        watch = FailureWatch(state.failures)  # every tick: it costs what the failures cost
        budget = failed_image_retries.budget
        failed = budget.plan([f for f in watch.look(instance, set(order)) if f.stage == QDRANT_INDEX.to_user_string()],
                             time.time())
        state.failures = watch.cursor
        if failed.exhausted:
            context.log.warning(failed.describe_exhausted(budget.attempts, HOW_TO_FIX))
        requests = retry_requests(failed.due, order)
        retried_batches = {f.batch for f in failed.due}
        if retried_batches:
            context.log.warning(f"re-indexing {len(retried_batches)} batch(es) whose qdrant_index failed for good")
        retried = {image for batch, manifest in image_store.results.read_manifests(sorted(retried_batches)).items()
                   if manifest for image in manifest.images}
        notes = [failed.describe_waiting(), failed.describe_exhausted(budget.attempts, HOW_TO_FIX)]
        audit_note, missing_requests = audit_when_due(context, image_store, qdrant, state, order, retried)
        requests += missing_requests
        if not requests:
            return dg.SensorResult(skip_reason="; ".join(filter(None, [audit_note, *notes])), cursor=state.dump())
        return dg.SensorResult(run_requests=requests, cursor=state.dump())

    return index_repair
