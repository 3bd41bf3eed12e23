"""The batching event logs (vision_assets/event_storage) keep what Dagster's own keep, for the events a batched run
writes: the same events, per-partition materializations with their metadata, per-partition check results the UI
counts as current, and the planned materializations that make a failed run's partitions show as failed. Compared
on one job run against Dagster's SQLite event log and ours, on SQLite and (where a server can be started) Postgres."""

import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import dagster as dg
import pytest
import sqlalchemy
import yaml

from tests.conftest import check_statuses, ui_check_statuses
from tests.postgres_server import create_database
from vision_assets.assets.batch_checks import BatchCheck, ImageOutcome
from vision_assets.assets.stage import BatchMetadata, RunImages
from vision_assets.event_storage import sqlite_storage
from vision_assets.partitions import batches as images
from vision_assets.vision.batches import BatchManifest

pytestmark = pytest.mark.slow  # see docs/testing.md: `uv run pytest -m "not slow"` leaves it out

KEYS = [f"photo_{i:02d}.jpg" for i in range(10)] + ["bad_10.jpg", "bad_11.jpg", "skip_12.jpg"]
RANGE = {"dagster/asset_partition_range_start": KEYS[0], "dagster/asset_partition_range_end": KEYS[-1]}

toy_check = BatchCheck(asset=dg.AssetKey("toy"), name="toy_ok", severity=dg.AssetCheckSeverity.WARN,
                       description="Toy.", not_passed="failed")


def one_image_batches(keys: list[str]) -> RunImages:
    """Batches of one image each, named after it (the storage sees partitions, whatever they hold)."""
    now = datetime.now(UTC)
    return RunImages(manifests={k: BatchManifest(batch=k, created_at=now, images=[k]) for k in keys},
                     by_batch={k: [k] for k in keys})


@dg.asset(key="toy", partitions_def=images, backfill_policy=dg.BackfillPolicy.single_run(),
          check_specs=[toy_check.spec])
def toy(context: dg.AssetExecutionContext):
    metadata = BatchMetadata(context)
    for key in context.partition_keys:
        metadata.add(key, {"status": "done", "letters": len(key)})
    yield metadata.materialize()
    # "skip" batches are never judged: the run planned their check, so Dagster shows them Skipped
    judged = [k for k in context.partition_keys if not k.startswith("skip")]
    outcomes = {k: ImageOutcome(k, passed=not k.startswith("bad"), description=f"{k} judged") for k in judged}
    yield from toy_check.report(context, one_image_batches(judged), outcomes, {}, judge=lambda image, batch: "n/a")


class Boom(Exception):
    pass


@dg.asset(key="after_toy", deps=[toy], partitions_def=images, backfill_policy=dg.BackfillPolicy.single_run())
def after_toy(context: dg.AssetExecutionContext):
    raise Boom("a step that fails: its partitions must show as failed")


doomed_check = BatchCheck(asset=dg.AssetKey("doomed"), name="doomed_ok", severity=dg.AssetCheckSeverity.WARN,
                          description="Never judged.", not_passed="failed")


@dg.asset(key="doomed", partitions_def=images, backfill_policy=dg.BackfillPolicy.single_run(),
          check_specs=[doomed_check.spec])
def doomed(context: dg.AssetExecutionContext):
    raise Boom("the step dies before judging: its planned per-image results end as execution failures")


toy_job = dg.define_asset_job("toy_job", selection=[toy], partitions_def=images)
failing_job = dg.define_asset_job("failing_job", selection=[after_toy], partitions_def=images)
doomed_job = dg.define_asset_job("doomed_job", selection=[doomed], partitions_def=images)
DEFS = dg.Definitions(assets=[toy, after_toy, doomed], jobs=[toy_job, failing_job, doomed_job])


def postgres_storage(user: str, port: int) -> dict:
    """deploy/dagster.yaml's storage classes, on a new database of the test server."""
    name = f"events_{uuid.uuid4().hex[:8]}"
    create_database(user, port, name)
    server = {"hostname": "127.0.0.1", "port": port, "username": user, "password": "", "db_name": name,
              "scheme": "postgresql+psycopg2"}
    deploy = yaml.safe_load(open("deploy/dagster.yaml"))
    return {key: deploy[key] | {"config": {"postgres_db": server}}
            for key in ("run_storage", "event_log_storage", "schedule_storage")}


def run_everything(instance: dg.DagsterInstance) -> dict:
    """Two batched runs of `toy` (the second re-materializes everything) and one failing run; what they left."""
    instance.add_dynamic_partitions(images.name, KEYS)
    batches: list[int] = []
    storage_batch = instance.event_log_storage.store_event_batch
    instance.event_log_storage.store_event_batch = lambda events: (batches.append(len(events)), storage_batch(events))
    results = [DEFS.resolve_job_def("toy_job").execute_in_process(instance=instance, tags=RANGE) for _ in range(2)]
    failed = DEFS.resolve_job_def("failing_job").execute_in_process(instance=instance, tags=RANGE, raise_on_error=False)
    assert all(r.success for r in results) and not failed.success
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("toy")), limit=100).records
    latest = {}
    for record in records:  # newest first
        latest.setdefault(record.partition_key, {k: v.value for k, v in record.asset_materialization.metadata.items()})
    events = Counter(
        r.event_log_entry.dagster_event_type.value for run in (*results, failed)
        for r in instance.get_records_for_run(run.run_id, limit=10_000).records if r.event_log_entry.is_dagster_event)
    attempts = instance.event_log_storage.get_latest_asset_partition_materialization_attempts_without_materializations(
        dg.AssetKey("after_toy"))
    return {
        "materializations": len(records),
        "metadata": latest,
        "checks": ui_check_statuses(instance, "toy", "toy_ok"),
        "events": events,
        "failed_run_partitions": {key for key, (run_id, _) in attempts.items() if run_id == failed.run_id},
        "last_materialized": instance.get_asset_records([dg.AssetKey("toy")])[0].asset_entry.last_materialization.dagster_event.partition
        if instance.get_asset_records([dg.AssetKey("toy")]) else None,
        "batches": batches,
    }


@pytest.fixture(scope="module")
def dagster_own(tmp_path_factory):
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("dagster-own"))) as instance:
        return run_everything(instance)


def assert_same(ours: dict, theirs: dict) -> None:
    assert ours["materializations"] == theirs["materializations"] == 2 * len(KEYS)
    assert ours["metadata"] == theirs["metadata"]
    assert ours["metadata"]["photo_03.jpg"] == {"status": "done", "letters": len("photo_03.jpg")}
    assert ours["checks"] == theirs["checks"]
    assert ours["checks"] == {"SUCCEEDED": set(KEYS[:10]), "FAILED": set(KEYS[10:12]), "SKIPPED": set(KEYS[12:])}
    assert ours["events"] == theirs["events"]
    assert ours["failed_run_partitions"] == theirs["failed_run_partitions"] == set(KEYS)
    assert ours["last_materialized"] == theirs["last_materialized"]
    # and the events of a run's partitions did reach the storage as batches
    assert max(ours["batches"]) >= len(KEYS)


def test_sqlite_batches_store_what_dagster_stores(tmp_path, dagster_own, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    engines: list[str] = []  # the database files ours built an engine for (Dagster builds one per connection)
    build = sqlalchemy.create_engine
    monkeypatch.setattr(sqlalchemy, "create_engine", lambda url, **kw: (engines.append(str(url)), build(url, **kw))[1])
    with dg.instance_for_test(temp_dir=str(home), overrides=sqlite_storage(str(home))) as instance:
        assert type(instance.event_log_storage).__name__ == "BatchingSqliteEventLogStorage"
        assert_same(run_everything(instance), dagster_own)
    # hundreds of connections to the index and the three runs' files, one engine each
    assert len(engines) == len(set(engines)) == 4, engines


def test_postgres_batches_store_what_dagster_stores(tmp_path, postgres, dagster_own):
    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home), overrides=postgres_storage(*postgres)) as instance:
        assert type(instance.event_log_storage).__name__ == "BatchingPostgresEventLogStorage"
        assert_same(run_everything(instance), dagster_own)


class Statements:
    """The SQL statements sent while recording (all engines)."""

    def __init__(self):
        self.sent: list[str] = []

    def __enter__(self):
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc):
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", self._record)

    def _record(self, conn, cursor, statement, *args):
        if "dynamic_partitions" in statement and statement.lstrip().upper().startswith("SELECT"):
            self.sent.append(" ".join(statement.split()))


def storage_pair(backend: str, tmp_path, postgres_server_or_none):
    """Ours and Dagster's own event log storage on one database, as two processes of one instance would be."""
    if backend == "sqlite":
        from dagster._core.storage.event_log import SqliteEventLogStorage

        from vision_assets.event_storage.sqlite import BatchingSqliteEventLogStorage
        return BatchingSqliteEventLogStorage(str(tmp_path)), SqliteEventLogStorage(str(tmp_path))
    from dagster_postgres.event_log.event_log import PostgresEventLogStorage
    from dagster_postgres.utils import pg_url_from_config

    from vision_assets.event_storage.postgres import BatchingPostgresEventLogStorage
    url = pg_url_from_config(postgres_storage(*postgres_server_or_none)["event_log_storage"]["config"])
    return BatchingPostgresEventLogStorage(url), PostgresEventLogStorage(url)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_partition_list_follows_changes_made_elsewhere_without_reloading_all(backend, tmp_path, request):
    server = request.getfixturevalue("postgres") if backend == "postgres" else None
    ours, theirs = storage_pair(backend, tmp_path, server)
    name = images.name

    def agree(expected: list[str]) -> list[str]:
        with Statements() as statements:
            listed = ours.get_dynamic_partitions(name)
        assert listed == theirs.get_dynamic_partitions(name) == expected
        return statements.sent

    keys = [f"k{i:03d}" for i in range(200)]
    theirs.add_dynamic_partitions(name, keys.copy())
    agree(keys)
    unchanged = agree(keys)  # a count and the newest row, nothing that returns every key
    assert unchanged and all("count(" in s.lower() or "LIMIT" in s.upper() for s in unchanged), unchanged
    theirs.add_dynamic_partitions(name, ["new_a", "new_b"])
    keys += ["new_a", "new_b"]
    grown = agree(keys)  # only the rows past the newest known
    assert any("id >" in s for s in grown), grown
    theirs.delete_dynamic_partition(name, "k050")
    keys.remove("k050")
    agree(keys)
    # The newest keys deleted, then a new key and a deleted one added again: SQLite gives them the same ids.
    theirs.delete_dynamic_partition(name, "new_a")
    theirs.delete_dynamic_partition(name, "new_b")
    time.sleep(1.1)  # SQLite stores creation times to the second
    theirs.add_dynamic_partitions(name, ["other", "new_b"])
    agree(keys[:-2] + ["other", "new_b"])
    # Again with more keys than were deleted: the list grows, but not only at its end.
    theirs.delete_dynamic_partition(name, "other")
    theirs.delete_dynamic_partition(name, "new_b")
    time.sleep(1.1)
    theirs.add_dynamic_partitions(name, ["x", "new_b", "y"])
    agree(keys[:-2] + ["x", "new_b", "y"])
    for key in theirs.get_dynamic_partitions(name):
        theirs.delete_dynamic_partition(name, key)
    agree([])
    assert ours.get_dynamic_partitions("another") == []


def test_check_partitions_view_is_dagsters_rebuild_after_changes(tmp_path):
    """Our one-pass check state (check_states.py) against Dagster's own result-by-result rebuild on the same
    instance: results on an older materialization, a deleted partition, planned results of a run that died."""
    from dagster._core.definitions.partitions.context import partition_loading_context
    from dagster._core.storage.asset_check_state import AssetCheckState, bulk_update_asset_check_state

    home = tmp_path / "home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home), overrides=sqlite_storage(str(home))) as instance:
        run_everything(instance)
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="toy", partition="photo_00.jpg"))
        instance.delete_dynamic_partition(images.name, "photo_01.jpg")
        assert not DEFS.resolve_job_def("doomed_job").execute_in_process(
            instance=instance, tags=RANGE, raise_on_error=False).success
        keys = [(toy_check.key, images), (doomed_check.key, images)]
        with partition_loading_context(dynamic_partitions_store=instance):
            ours = instance.event_log_storage.get_asset_check_state(keys)
            theirs = bulk_update_asset_check_state(instance, keys, {key: AssetCheckState.empty() for key, _ in keys})
        assert check_statuses(ours[toy_check.key]) == check_statuses(theirs[toy_check.key]) == {
            "SUCCEEDED": set(KEYS[2:10]), "FAILED": set(KEYS[10:12]), "SKIPPED": set(KEYS[12:])}
        assert check_statuses(ours[doomed_check.key]) == check_statuses(theirs[doomed_check.key]) == {
            "EXECUTION_FAILED": set(KEYS) - {"photo_01.jpg"}}
        assert ours[toy_check.key].latest_storage_id == theirs[toy_check.key].latest_storage_id
