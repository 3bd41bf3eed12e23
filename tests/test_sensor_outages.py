"""A store outage reads as an outage in the sensors' ticks: one line naming what is out of reach and the last
success, a skipped tick instead of a failed one with a stack trace, the cursor kept; and the tick after the outage
does the work. S3 is moto's server behind a proxy that stops answering (tests/faults.py)."""

from urllib.parse import urlparse

import pytest

from tests.conftest import PHOTOS, SensorDriver
from tests.faults import OutageProxy
from vision_assets.resources import S3Connection, S3ImageStore
from vision_assets.sensors import outages
from vision_assets.vision.index.connection import IndexUnavailable
from vision_assets.wiring import build_definitions


@pytest.fixture
def proxied_store(s3_endpoint, bucket):
    endpoint = urlparse(s3_endpoint)
    proxy = OutageProxy(endpoint.hostname, endpoint.port)
    # One attempt per request: botocore's own retries would only make each outage tick slower here.
    store = S3ImageStore(s3=S3Connection(endpoint_url=proxy.url, region_name="us-east-1", max_attempts=1), bucket=bucket,
                         prefix="uploads/", results_prefix="results/")
    yield proxy, store
    proxy.close()


def test_an_outage_is_one_skipped_line_with_the_last_success_and_the_next_tick_does_the_work(
        models, instance, proxied_store, s3_client, bucket, monkeypatch):
    from vision_assets.vision.storage import object_store

    monkeypatch.setattr(outages, "_last_success", {})
    monkeypatch.setattr(object_store, "OWN_RETRIES", 1)  # the store's own retries would only make each tick slower
    proxy, store = proxied_store
    s3_client.put_object(Bucket=bucket, Key="uploads/bus.jpg", Body=(PHOTOS / "bus.jpg").read_bytes())
    defs = build_definitions(store, models)
    uploads, reviews = SensorDriver(defs, instance), SensorDriver(defs, instance, sensor="review_sensor")

    proxy.outage()
    for driver in (uploads, reviews):
        result = driver.tick()
        assert not result.run_requests and result.cursor is None  # nothing done, nothing moved on
        line = result.skip_message
        assert line.startswith(f"S3 unreachable at {proxy.url} (bucket {bucket}): waiting; last success none since")
        assert "\n" not in line and "Traceback" not in line and len(line) < 600, line

    proxy.restore()
    [request] = uploads.tick().run_requests  # the upload the outage held back
    assert request.partition_key
    reviews.tick()

    proxy.outage()
    line = uploads.tick().skip_message
    assert "waiting; last success 20" in line and " s ago)" in line, line


def test_each_kind_of_outage_names_what_is_out_of_reach():
    from vision_assets.resources import QdrantResource
    from vision_assets.vision.models.remote import ModelServiceUnavailable

    line = outages.outage_line(IndexUnavailable("stayed busy\nfor 5s"), {"qdrant": QdrantResource(path="/q")}, None)
    assert line.startswith("Qdrant unreachable at embedded at /q: waiting; last success none since")
    assert line.endswith("(stayed busy for 5s)")
    line = outages.outage_line(ModelServiceUnavailable("x" * 1000), {}, None)
    assert line.startswith("The model service unreachable: waiting;") and len(line) < 500
