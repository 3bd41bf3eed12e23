"""`deploy/dagster.yaml` as a team would use it: a real instance started from that file (DAGSTER_HOME holding it, its
`{env: DAGSTER_PG_*}` settings pointing at the suite's throwaway Postgres), and one upload batch through every stage
on it. Only the port differs from the file: the test server listens on a free one, not 5432."""

import uuid

import dagster as dg
import pytest
import yaml

from tests.conftest import PHOTOS, SensorDriver, latest_evaluation
from tests.postgres_server import create_database
from vision_assets.event_storage.postgres import BatchingPostgresEventLogStorage
from vision_assets.keys import QDRANT_INDEX
from vision_assets.wiring import build_definitions

pytestmark = pytest.mark.slow  # see docs/testing.md: `uv run pytest -m "not slow"` leaves it out

DEPLOY = "deploy/dagster.yaml"


def test_the_deploy_instance_starts_from_its_file_and_runs_a_batch(tmp_path, postgres, models, local_image_store,
                                                                   monkeypatch):
    user, port = postgres
    database = f"deploy_{uuid.uuid4().hex[:8]}"
    create_database(user, port, database)
    config = yaml.safe_load(open(DEPLOY))
    for storage in ("run_storage", "event_log_storage", "schedule_storage"):
        config[storage]["config"]["postgres_db"]["port"] = port
    home = tmp_path / "dagster-home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    for name, value in {"DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_USER": user,
                        "DAGSTER_PG_PASSWORD": "trusted", "DAGSTER_PG_DB": database}.items():
        monkeypatch.setenv(name, value)

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.event_log_storage, BatchingPostgresEventLogStorage)
        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        assert instance.run_retries_enabled and instance.run_monitoring_enabled
        assert not instance.telemetry_enabled

        bucket = tmp_path / "bucket"
        (bucket / "cam").mkdir(parents=True)
        (bucket / "cam" / "bus.jpg").write_bytes((PHOTOS / "bus.jpg").read_bytes())
        driver = SensorDriver(build_definitions(local_image_store, models), instance, whole_pipeline=True)
        [run] = driver.tick_and_run()
        assert run.success
        [batch] = driver.batches
        indexed = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=QDRANT_INDEX,
                                                                        asset_partitions=[batch]), limit=1).records
        assert indexed and indexed[0].run_id == run.run_id
        assert latest_evaluation(instance, "qdrant_index", "index_consistent").passed
