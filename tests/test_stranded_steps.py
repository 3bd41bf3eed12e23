"""The pending-step race in Dagster's op concurrency, reproduced on a real instance's storage, and healed by the
`stranded_steps` sensor (sensors/stranded_steps.py says where the race is in Dagster's code)."""

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from vision_assets.sensors import stranded_steps as module

POOL = "qdrant"


@pytest.fixture
def storage_with_a_pool(instance):
    storage = instance.event_log_storage
    storage.set_concurrency_slots(POOL, 1)
    return storage


def started_run(instance) -> str:
    return create_run_for_test(instance, job_name="process_images", status=dg.DagsterRunStatus.STARTED).run_id


def strand_a_step(instance, storage, monkeypatch) -> tuple[str, str]:
    """Run A holds the pool's only slot; run B's step asks for it, and A frees the slot between B's two moves
    (B's look for an unassigned slot, then its pending row): B is left unassigned with the slot free."""
    holder, waiter = started_run(instance), started_run(instance)
    assert storage.claim_concurrency_slot(POOL, holder, "qdrant_index").is_claimed
    real = storage.has_unassigned_slots

    def the_slot_freed_in_between(key):
        seen = real(key)
        storage.free_concurrency_slot_for_step(holder, "qdrant_index")  # A finishes just now
        return seen

    monkeypatch.setattr(storage, "has_unassigned_slots", the_slot_freed_in_between)
    assert not storage.claim_concurrency_slot(POOL, waiter, "qdrant_index").is_claimed
    monkeypatch.setattr(storage, "has_unassigned_slots", real)
    return holder, waiter


def tick(instance):
    sensor = module.make_stranded_step_sensor(60)
    with dg.build_sensor_context(instance=instance) as context:
        return sensor.evaluate_tick(context)


def test_a_step_stranded_on_a_free_pool_is_assigned_again_and_said(instance, storage_with_a_pool, monkeypatch):
    storage = storage_with_a_pool
    _, waiter = strand_a_step(instance, storage, monkeypatch)
    info = storage.get_concurrency_info(POOL)
    assert module.free_slots(info) == 1 and info.pending_step_count == 1
    assert not storage.claim_concurrency_slot(POOL, waiter, "qdrant_index").is_claimed  # Dagster alone: stuck

    assert tick(instance).skip_message == "no step is waiting on a pool with a free slot"  # not two minutes yet
    monkeypatch.setattr(module, "STRANDED_AFTER_SECONDS", 0)
    said = tick(instance).skip_message
    assert f"step qdrant_index of run {waiter}" in said and "pool qdrant with 1 free slot(s): assigned again" in said
    assert storage.claim_concurrency_slot(POOL, waiter, "qdrant_index").is_claimed


def test_a_step_waiting_for_a_slot_someone_holds_is_left_waiting(instance, storage_with_a_pool, monkeypatch):
    storage = storage_with_a_pool
    monkeypatch.setattr(module, "STRANDED_AFTER_SECONDS", 0)
    holder, waiter = started_run(instance), started_run(instance)
    assert storage.claim_concurrency_slot(POOL, holder, "qdrant_index").is_claimed
    assert not storage.claim_concurrency_slot(POOL, waiter, "qdrant_index").is_claimed  # the ordinary wait
    assert tick(instance).skip_message == "no step is waiting on a pool with a free slot"
    assert not storage.claim_concurrency_slot(POOL, waiter, "qdrant_index").is_claimed
    storage.free_concurrency_slot_for_step(holder, "qdrant_index")  # Dagster's own path assigns it
    assert storage.claim_concurrency_slot(POOL, waiter, "qdrant_index").is_claimed
