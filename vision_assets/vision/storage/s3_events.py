"""Uploads announced by S3 event notifications through an SQS queue, instead of found by listing the bucket.

Listing costs a request per 1,000 objects on every tick (58.7 s for an idle tick at 50,000 objects, measured here),
however few of them are new. With the bucket's `s3:ObjectCreated:*` events sent to a queue, a tick reads only
what changed: an idle tick is one empty receive, whatever the bucket holds.

SQS delivers at least once and keeps a message until it is deleted; here a message is deleted only on the tick
*after* the one that registered its uploads and requested their runs (Dagster stores a tick's cursor only once its
partitions and run requests are applied, and the receipt handles travel in that cursor). A daemon that dies in
between leaves the messages in the queue; they come back after their visibility timeout and are recognised as
seen (the cursor's fingerprints, the registered partitions, and run keys that name the object versions). So each
upload is registered and run once, whatever crashes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from ..chunking import chunked
from ..records import StoredObject
from .object_store import s3_errors

MAX_PER_RECEIVE = 10  # SQS's own limit
DELETE_BATCH = 10  # likewise


@dataclass(frozen=True)
class ObjectEvent:
    created: bool  # False: removed
    obj: StoredObject


@dataclass(frozen=True)
class QueueMessage:
    receipt: str
    events: list[ObjectEvent]
    unreadable: str | None = None  # why the body is not an S3 notification (it is still deleted: it never will be)


def parse_notification(body: str, bucket: str) -> list[ObjectEvent]:
    """The object events of one message body: an S3 notification, or one wrapped by SNS (`Message`). S3's test
    event and other buckets' events yield none; anything else that is not a notification raises ValueError."""
    document = json.loads(body)
    if isinstance(document, dict) and isinstance(document.get("Message"), str) and "Records" not in document:
        document = json.loads(document["Message"])  # S3 -> SNS -> SQS
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    if document.get("Event") == "s3:TestEvent":
        return []
    if "Records" not in document:
        raise ValueError("no Records: not an S3 event notification")
    events = []
    for record in document["Records"]:
        s3 = record["s3"]
        if s3["bucket"]["name"] != bucket:
            continue
        name = record["eventName"]
        if not name.startswith(("ObjectCreated:", "ObjectRemoved:")):
            continue
        obj = s3["object"]
        events.append(ObjectEvent(
            created=name.startswith("ObjectCreated:"),
            obj=StoredObject(key=unquote_plus(obj["key"]), etag=str(obj.get("eTag", "")).strip('"'),
                             size=int(obj.get("size", 0)),
                             last_modified=datetime.fromisoformat(record["eventTime"].replace("Z", "+00:00")))))
    return events


class EventQueue:
    """An SQS queue of one bucket's S3 event notifications."""

    def __init__(self, sqs: Any, queue_url: str, bucket: str, visibility_timeout: int = 300):
        self.sqs = sqs
        self.queue_url = queue_url
        self.bucket = bucket
        self.visibility_timeout = visibility_timeout

    def receive(self, max_events: int) -> list[QueueMessage]:
        """Messages until the queue has none to give now or `max_events` object events are in hand. Received
        messages stay hidden from other readers for `visibility_timeout` seconds, then come back unless deleted."""
        messages: list[QueueMessage] = []
        events = 0
        while events < max_events:
            with s3_errors(f"receiving from the events queue {self.queue_url}"):
                answer = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=MAX_PER_RECEIVE,
                                                  VisibilityTimeout=self.visibility_timeout, WaitTimeSeconds=0)
            received = answer.get("Messages", [])
            if not received:
                break
            for message in received:
                try:
                    parsed = QueueMessage(message["ReceiptHandle"], parse_notification(message["Body"], self.bucket))
                except (ValueError, KeyError, TypeError) as error:
                    parsed = QueueMessage(message["ReceiptHandle"], [], f"{type(error).__name__}: {error}")
                messages.append(parsed)
                events += len(parsed.events)
        return messages

    def delete(self, receipts: list[str]) -> None:
        for chunk in chunked(receipts, DELETE_BATCH):
            with s3_errors(f"acknowledging messages of the events queue {self.queue_url}"):
                self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": receipt} for i, receipt in enumerate(chunk)])
