"""The upload sensor fed by S3 event notifications through SQS (vision/storage/s3_events.py), against moto's server
on loopback with the bucket's real notification configuration: uploads are registered from the queue without
listing the bucket, each exactly once across a daemon that dies before storing its tick, the queue is emptied only
after, and a periodic listing catches what the events missed."""

import json
import time

import boto3
import pytest

from tests.conftest import SensorDriver, image_bytes
from vision_assets.resources import S3ImageStore
from vision_assets.vision.partition_keys import partition_key_for
from vision_assets.vision.storage.object_store import S3ObjectStore
from vision_assets.wiring import build_definitions


@pytest.fixture
def sqs(s3_endpoint):
    return boto3.client("sqs", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def queue(sqs, s3_client, bucket) -> str:
    url = sqs.create_queue(QueueName=f"{bucket}-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3_client.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [
        {"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
         # the uploads only: the pipeline's own writes under the results prefix are no news
         "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "uploads/"}]}}}]})
    return url


@pytest.fixture
def driver(models, s3_image_store, instance, queue):
    store = S3ImageStore(s3=s3_image_store.s3, bucket=s3_image_store.bucket, prefix=s3_image_store.prefix,
                         results_prefix=s3_image_store.results_prefix, image_extensions=[".jpg", ".png"],
                         events_queue_url=queue, reconcile_seconds=3600)
    return SensorDriver(build_definitions(store, models), instance)


def images_of(driver, result) -> list[list[str]]:
    """The images of each run the tick requested, from its batch's manifest."""
    results = driver.defs.resources["image_store"].results
    return [results.read_manifest(r.partition_key).images for r in result.run_requests]


def upload(s3_client, bucket, *names):
    for name in names:
        s3_client.put_object(Bucket=bucket, Key=f"uploads/{name}", Body=image_bytes())


def in_queue(sqs, queue) -> int:
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture
def no_listing(monkeypatch):
    """Any listing of the bucket fails the test (event ticks must not list)."""
    def listed(self, prefix="", *_):
        raise AssertionError(f"the bucket was listed ({prefix!r})")
    monkeypatch.setattr(S3ObjectStore, "list", listed)
    monkeypatch.setattr(S3ObjectStore, "list_slice", listed)


def test_uploads_come_from_the_queue_and_idle_ticks_do_not_list(driver, s3_client, bucket, sqs, queue, monkeypatch):
    upload(s3_client, bucket, "before.jpg")
    first = driver.tick()  # no listing yet: the first tick lists the bucket (what came before the queue)
    assert images_of(driver, first) == [["before.jpg"]]  # listed, and announced by the queue too: one upload

    listed = []
    monkeypatch.setattr(S3ObjectStore, "list", lambda self, prefix="": listed.append(prefix) or iter(()))
    monkeypatch.setattr(S3ObjectStore, "list_slice", lambda self, prefix, *_: listed.append(prefix))
    upload(s3_client, bucket, "a.jpg", "my photo+1.jpg")
    s3_client.put_object(Bucket=bucket, Key="uploads/notes.md", Body=b"x")  # an event, not an image
    result = driver.tick()
    odd = partition_key_for("my photo+1.jpg")  # the key decoded from the event's URL form ("my+photo%2B1.jpg")
    assert sorted(driver.partitions) == sorted(["a.jpg", "before.jpg", odd])
    [images] = images_of(driver, result)
    assert sorted(images) == sorted(["a.jpg", odd])
    # not deleted yet (this tick's cursor is stored only once it is applied): three uploads (the first tick's two
    # messages, S3's test event and before.jpg's, were deleted by this tick)
    assert in_queue(sqs, queue) == 3
    idle = driver.tick()
    assert idle.run_requests == [] and "no upload events" in idle.skip_message
    assert in_queue(sqs, queue) == 0
    for _ in range(3):
        assert driver.tick().run_requests == []
    assert listed == []


def test_a_daemon_that_dies_before_storing_its_tick_registers_nothing_twice(driver, s3_client, bucket, sqs, queue,
                                                                            no_listing):
    driver.cursor = json.dumps({"listed_at": time.time()})  # listed just now: this test's ticks read events only
    upload(s3_client, bucket, "x.jpg", "y.jpg")
    stored_cursor = driver.cursor
    died = driver.tick()  # partitions added, runs requested ... and the daemon dies before the cursor is stored
    assert sorted(driver.partitions) == ["x.jpg", "y.jpg"] and len(died.run_requests) == 1
    for receipt in json.loads(driver.cursor)["acknowledge"]:  # their visibility timeout runs out: they come back
        sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=receipt, VisibilityTimeout=0)
    driver.cursor = stored_cursor
    again = driver.tick()
    assert sorted(driver.partitions) == ["x.jpg", "y.jpg"]  # registered once
    # the same run keys: Dagster launches a run key once, so the batch runs once
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in died.run_requests]
    driver.tick()  # deletes them
    assert driver.tick().run_requests == []
    assert in_queue(sqs, queue) == 0


def test_the_periodic_listing_catches_what_the_events_missed(driver, s3_client, bucket):
    driver.tick()  # the first listing
    s3_client.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})
    upload(s3_client, bucket, "missed.jpg")  # no event: the notification was off
    assert driver.tick().run_requests == []
    cursor = json.loads(driver.cursor)
    cursor["listed_at"] = time.time() - 3601  # an hour since the last listing
    driver.cursor = json.dumps(cursor)
    result = driver.tick()
    assert images_of(driver, result) == [["missed.jpg"]]
