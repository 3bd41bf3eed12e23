"""Telling the user's application that an image is finished (indexed or rejected).

The pipeline never talks to the receiver: it writes a message to an outbox in the results store, and the callback
sensor delivers it, so a receiver that is down never slows or fails a run. Delivery is at-least-once: a message
leaves the outbox only after a 2xx; failures are retried with exponential backoff. Receivers de-duplicate with the
idempotency key and verify the HMAC signature.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from .object_store import ObjectMissing
from .records import SourceImageRecord
from .results_store import ResultsStore

SIGNATURE_HEADER = "X-Vision-Assets-Signature"
TIMESTAMP_HEADER = "X-Vision-Assets-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
OUTBOX = "~outbox/"
MAX_BACKOFF = timedelta(hours=1)


class CallbackMessage(BaseModel):
    image_id: str
    object_key: str  # the raw key in the bucket; `source_uri` is the same, percent-encoded
    source_uri: str
    status: str  # "indexed" | "rejected" | "failed"
    labels: list[dict] = Field(default_factory=list)  # the experts' top labels: name, confidence, specialist
    failed_checks: list[dict] = Field(default_factory=list)  # check name and why
    idempotency_key: str
    finished_at: datetime


class OutboxEntry(BaseModel):
    message: CallbackMessage
    attempts: int = 0
    next_attempt_at: datetime
    last_error: str | None = None


class CallbackRefused(ValueError):
    """The destination is not allowed (private or loopback address without the setting that permits it)."""


def idempotency_key(image_id: str, version: str, status: str) -> str:
    """Same image version and outcome -> same key, however often the message is sent."""
    return hashlib.sha256(f"{image_id}\0{version}\0{status}".encode()).hexdigest()[:32]


def sign(body: bytes, secret: str, timestamp: str) -> str:
    """HMAC-SHA256 over `<timestamp>.<body>`; receivers recompute it and compare in constant time."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def check_destination(url: str, allow_private: bool) -> None:
    """Refuse URLs that resolve to loopback, private, link-local or reserved addresses (SSRF), unless allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused(f"callback URL must be http(s)://host/...: {url!r}")
    if allow_private:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)}
    except OSError as error:
        raise CallbackRefused(f"cannot resolve {parts.hostname}: {error}") from error
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast:
            raise CallbackRefused(f"{parts.hostname} resolves to {ip}, a private address; set "
                                  "VISION_ASSETS_CALLBACK_ALLOW_PRIVATE=1 to allow it")


class Outbox:
    def __init__(self, results: ResultsStore):
        self.results = results
        self.prefix = f"{results.prefix}{OUTBOX}"

    def _key(self, entry: OutboxEntry) -> str:
        return f"{self.prefix}{entry.message.idempotency_key}.json"

    def _save(self, entry: OutboxEntry) -> None:
        self.results.store.put(self._key(entry), entry.model_dump_json().encode(), "application/json")

    def add(self, message: CallbackMessage) -> None:
        self._save(OutboxEntry(message=message, next_attempt_at=message.finished_at))

    def pending(self) -> list[OutboxEntry]:
        entries = []
        for obj in self.results.store.list(self.prefix):
            try:
                entries.append(OutboxEntry.model_validate_json(self.results.store.get(obj.key)[1]))
            except ObjectMissing:  # delivered meanwhile
                continue
        return sorted(entries, key=lambda e: e.next_attempt_at)

    def delivered(self, entry: OutboxEntry) -> None:
        self.results.store.delete(self._key(entry))

    def failed(self, entry: OutboxEntry, error: str, now: datetime, base_backoff: timedelta) -> OutboxEntry:
        delay = min(base_backoff * (2**entry.attempts), MAX_BACKOFF)
        updated = entry.model_copy(update={"attempts": entry.attempts + 1, "next_attempt_at": now + delay,
                                           "last_error": error})
        self._save(updated)
        return updated


def deliver(entry: OutboxEntry, url: str, secret: str, timeout: float) -> str | None:
    """POST the message. None on a 2xx; otherwise why not."""
    body = entry.message.model_dump_json().encode()
    timestamp = str(int(datetime.now(timezone.utc).timestamp()))
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(body, secret, timestamp),
        TIMESTAMP_HEADER: timestamp,
        IDEMPOTENCY_HEADER: entry.message.idempotency_key,
    })
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - destination checked
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return f"unreachable: {getattr(error, 'reason', error)}"


def rejected_message(record: SourceImageRecord) -> CallbackMessage:
    return CallbackMessage(
        image_id=record.partition_key,
        object_key=record.object_key,
        source_uri=record.source_uri,
        status="rejected",
        failed_checks=[{"check": "image_valid", "reason": record.rejection.code.value,
                        "message": record.rejection.message}],
        idempotency_key=idempotency_key(record.partition_key, record.etag or record.sha256 or "", "rejected"),
        finished_at=datetime.now(timezone.utc),
    )


def finished_message(source: SourceImageRecord, labels: list[dict], review: list[str], problems: list[str],
                     failed_check: str | None = None) -> CallbackMessage:
    """An image at the end of the pipeline: indexed (perhaps with labels to review), or failed at a later check."""
    failed = [{"check": "labels_confident", "reason": "needs_review", "message": item} for item in review]
    if problems:
        failed.append({"check": failed_check or "indexed", "reason": "failed", "message": "; ".join(problems)})
    status = "failed" if problems else "indexed"
    return CallbackMessage(
        image_id=source.partition_key,
        object_key=source.object_key,
        source_uri=source.source_uri,
        status=status,
        labels=labels,
        failed_checks=failed,
        idempotency_key=idempotency_key(source.partition_key, source.etag or source.sha256 or "", status),
        finished_at=datetime.now(timezone.utc),
    )
