"""How often, and how soon, the pipeline re-runs images whose run failed for good (Dagster's own run retries used
up, or not allowed for that failure). Each re-run is an attempt; attempts wait longer each time and stop at a cap,
after which a person is told what to do. Plain Python: the sensors feed it what Dagster says about each image."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True)
class FailedBatch:
    batch: str  # the upload batch (partition) a run left failed
    stage: str  # the first stage of the pipeline that failed for it
    run_id: str  # the run whose failure left it failed
    attempt: int  # which re-run that run was (0: not a re-run)
    failed_at: float  # unix seconds the run ended


@dataclass(frozen=True)
class RetryPlan:
    due: list[FailedBatch] = field(default_factory=list)
    waiting: list[tuple[FailedBatch, float]] = field(default_factory=list)  # with the time it is due
    exhausted: list[FailedBatch] = field(default_factory=list)

    def describe_waiting(self) -> str:
        if not self.waiting:
            return ""
        soonest = datetime.fromtimestamp(min(when for _, when in self.waiting), UTC)
        return (f"{len(self.waiting)} failed batch(es) waiting for their next attempt (the first due at "
                f"{soonest.isoformat(timespec='seconds')})")

    def describe_exhausted(self, attempts: int, how_to_fix: str) -> str:
        if not self.exhausted:
            return ""
        names = ", ".join(f.batch for f in self.exhausted[:10]) + (" ..." if len(self.exhausted) > 10 else "")
        stages = sorted({f.stage for f in self.exhausted})
        return (f"{len(self.exhausted)} batch(es) still failed after {attempts} automatic re-run(s), left for a person "
                f"(stage {', '.join(stages)}): {names}. Read the error of their last run (tag "
                f"vision_assets/retry_attempt={attempts}), fix the cause, then {how_to_fix}")


@dataclass(frozen=True)
class RetryBudget:
    attempts: int = 3  # re-runs per batch after Dagster's run retries, then a person
    first_wait_seconds: float = 300.0  # before the first re-run; doubles for each further one

    def wait_before(self, attempt: int) -> float:
        """Seconds after the failure before re-run number `attempt` (1-based)."""
        return self.first_wait_seconds * 2 ** (attempt - 1)

    def plan(self, failed: Iterable[FailedBatch], now: float) -> RetryPlan:
        plan = RetryPlan()
        for batch in failed:
            if batch.attempt >= self.attempts:
                plan.exhausted.append(batch)
                continue
            due_at = batch.failed_at + self.wait_before(batch.attempt + 1)
            if due_at <= now:
                plan.due.append(batch)
            else:
                plan.waiting.append((batch, due_at))
        return plan
