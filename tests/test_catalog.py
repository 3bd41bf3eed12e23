"""The catalogue: every image with its status, the duplicate groups, and refreshes that only read what changed."""

import io

import dagster as dg
import pytest
from PIL import Image

from tests.conftest import PHOTOS, PIPELINE_VALID, SensorDriver
from vision_assets.vision.catalog import from_parquet
from vision_assets.vision.storage.results_store import CATALOG_FILE
from vision_assets.wiring import build_definitions

pytestmark = pytest.mark.slow  # see docs/testing.md: `uv run pytest -m "not slow"` leaves it out


def reencoded(name: str, quality: int = 70) -> bytes:
    buffer = io.BytesIO()
    Image.open(PHOTOS / name).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def refresh(defs, instance):
    result = defs.resolve_job_def("refresh_catalog").execute_in_process(instance=instance)
    assert result.success
    [materialization] = result.get_asset_materialization_events()
    [check] = result.get_asset_check_evaluations()
    return materialization.materialization.metadata, check


def read_catalog(store):
    return from_parquet(store.objects.get(f"{store.results.prefix}{CATALOG_FILE}")[1]).set_index("partition_key")


@pytest.fixture
def ingested(models, s3_image_store, instance, s3_client, bucket):
    uploads = {
        "bus.jpg": (PHOTOS / "bus.jpg").read_bytes(),
        "bus copy.jpg": (PHOTOS / "bus.jpg").read_bytes(),  # byte-identical
        "bus small.jpg": reencoded("bus.jpg"),  # same picture, re-encoded
        "zidane.jpg": (PHOTOS / "zidane.jpg").read_bytes(),
        "broken.jpg": b"definitely not a jpeg",
    }
    for name, data in uploads.items():
        s3_client.put_object(Bucket=bucket, Key=f"uploads/{name}", Body=data)
    defs = build_definitions(s3_image_store, models)
    driver = SensorDriver(defs, instance)
    assert all(run.success for run in driver.tick_and_run())
    return defs, driver


def test_one_row_per_image_with_status_and_reason(ingested, s3_image_store, instance):
    defs, driver = ingested
    metadata, _ = refresh(defs, instance)
    catalog = read_catalog(s3_image_store)
    assert sorted(catalog.index) == sorted(driver.partitions)
    broken = catalog.loc["broken.jpg"]
    assert broken["status"] == "rejected" and broken["rejection"] == "not_an_image" and "text" in broken["rejection_message"]
    bus = catalog.loc["bus.jpg"]
    assert bus["status"] == "valid" and bus["width"] == 810 and len(bus["sha256"]) == 64 and len(bus["phash"]) == 16
    assert metadata["images"].value == 5 and metadata["status"].value == {"valid": 4, "rejected": 1}


def test_duplicate_groups_and_the_warning(ingested, s3_image_store, instance):
    from vision_assets.vision.partition_keys import partition_key_for

    defs, _ = ingested
    _, check = refresh(defs, instance)
    copy, small = partition_key_for("bus copy.jpg"), partition_key_for("bus small.jpg")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["exact_groups"].value == [sorted(["bus.jpg", copy])]
    assert [sorted(["bus.jpg", copy, small])] == check.metadata["near_groups"].value
    catalog = read_catalog(s3_image_store)
    assert catalog.loc[copy, "exact_duplicate_group"] == catalog.loc["bus.jpg", "exact_duplicate_group"]
    assert catalog.loc["zidane.jpg", "near_duplicate_group"] is None


def test_refresh_reads_only_what_changed(ingested, s3_image_store, instance, s3_client, bucket):
    defs, driver = ingested
    first, _ = refresh(defs, instance)
    assert first["rows_read"].value == 5 and first["refreshed_by"].value == "listing every record"
    again, _ = refresh(defs, instance)
    assert (again["rows_read"].value, again["rows_reused"].value) == (0, 5)
    assert again["refreshed_by"].value.startswith("the feed: 0 batch")  # no listing of the results
    s3_client.put_object(Bucket=bucket, Key="uploads/broken.jpg", Body=(PHOTOS / "zidane.jpg").read_bytes())  # fixed
    assert all(run.success for run in driver.tick_and_run())
    after, _ = refresh(defs, instance)
    assert (after["rows_read"].value, after["rows_reused"].value) == (1, 4)
    assert after["refreshed_by"].value.startswith("the feed: 1 batch")  # the new batch's one image read, no more
    assert read_catalog(s3_image_store).loc["broken.jpg", "status"] == "valid"


def test_what_changed_outside_runs_waits_for_the_periodic_listing_and_gone_images_leave(ingested, s3_image_store,
                                                                                         instance, models):
    from vision_assets.partitions import images
    from vision_assets.resources import CatalogSettings

    defs, _ = ingested
    refresh(defs, instance)
    results = s3_image_store.results
    source = results.read_source_record("zidane.jpg")
    results.write_source_record(source.model_copy(update={"source_uri": source.source_uri + "?edited"}))  # by hand
    refresh(defs, instance)
    assert read_catalog(s3_image_store).loc["zidane.jpg", "source_uri"] == source.source_uri  # no run said so
    listing = build_definitions(s3_image_store, models, catalog=CatalogSettings(full_listing_hours=0))
    metadata, _ = refresh(listing, instance)
    assert metadata["refreshed_by"].value == "listing every record"
    assert (metadata["rows_read"].value, metadata["rows_reused"].value) == (1, 4)
    assert read_catalog(s3_image_store).loc["zidane.jpg", "source_uri"].endswith("?edited")
    instance.delete_dynamic_partition(images.name, "zidane.jpg")  # deleted (`vision-assets delete` does this)
    refresh(defs, instance)
    assert "zidane.jpg" not in read_catalog(s3_image_store).index


def test_processed_images_carry_their_labels(pipeline, s3_image_store, instance):
    driver, _ = pipeline
    refresh(driver.defs, instance)
    catalog = read_catalog(s3_image_store)
    for key in PIPELINE_VALID:
        row = catalog.loc[key]
        assert row["status"] == "processed" and row["objects"] > 0 and row["indexed_points"] == 1 + row["objects"]
    assert catalog.loc["corrupt.jpg", "status"] == "rejected"


def test_the_catalogue_is_refreshed_without_a_person_after_new_results(models, s3_image_store, instance, s3_client,
                                                                       bucket):
    """Declarative automation, as the `catalog_refresh` sensor evaluates it: nothing before any batch, a refresh after
    one, none again until the next batch; and a deployment with batches but no catalogue gets one at once."""
    from vision_assets.keys import IMAGE_CATALOG

    defs = build_definitions(s3_image_store, models)
    driver = SensorDriver(defs, instance)

    def requested(cursor):
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        return result.get_num_requested(IMAGE_CATALOG), result.cursor

    count, cursor = requested(None)
    assert count == 0  # no batch yet: nothing to catalogue
    s3_client.put_object(Bucket=bucket, Key="uploads/bus.jpg", Body=(PHOTOS / "bus.jpg").read_bytes())
    assert all(run.success for run in driver.tick_and_run())
    count, cursor = requested(cursor)
    assert count == 1
    count, cursor = requested(cursor)
    assert count == 0  # requested already: no second refresh for the same results
    assert requested(None)[0] == 1  # evaluated for the first time over batches and no catalogue (an upgrade)
    s3_client.put_object(Bucket=bucket, Key="uploads/zidane.jpg", Body=(PHOTOS / "zidane.jpg").read_bytes())
    assert all(run.success for run in driver.tick_and_run())
    assert requested(cursor)[0] == 1
    sensor = defs.resolve_sensor_def("catalog_refresh")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING  # on from the start, unlike Dagster's default one
