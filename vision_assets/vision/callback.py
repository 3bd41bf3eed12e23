"""Telling the user's application that an image is finished (indexed or rejected).

The pipeline never talks to the receiver: it writes a message to an outbox in the results store, and the callback
sensor delivers it, so a receiver that is down never slows or fails a run. Delivery is at-least-once: a message
leaves the outbox only after a 2xx; failures are retried with exponential backoff. Receivers de-duplicate with the
idempotency key and verify the HMAC signature.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, ValidationError

from .records import SourceImageRecord
from .storage.object_store import ObjectMissing
from .storage.results_store import OUTBOX, OUTBOX_DEAD, OUTBOX_QUARANTINE, ResultsStore

SIGNATURE_HEADER = "X-Vision-Assets-Signature"
TIMESTAMP_HEADER = "X-Vision-Assets-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_BACKOFF = timedelta(hours=1)


class CallbackMessage(BaseModel):
    image_id: str
    batch: str | None = None  # the upload batch it was processed in (its Dagster partition)
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
    """The destination is not allowed (not http(s), or an address that is not public without the setting that
    permits it)."""


def idempotency_key(image_id: str, version: str, status: str) -> str:
    """Same image version and outcome -> same key, however often the message is sent."""
    return hashlib.sha256(f"{image_id}\0{version}\0{status}".encode()).hexdigest()[:32]


def sign(body: bytes, secret: str, timestamp: str) -> str:
    """HMAC-SHA256 over `<timestamp>.<body>`; receivers recompute it and compare in constant time."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


Resolver = Callable[[str, int], list[str]]  # (host, port) -> the addresses it resolves to


def resolve(host: str, port: int) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def is_public(address: str) -> bool:
    """Globally routable unicast: not loopback, private, link-local, carrier-grade NAT (100.64/10), benchmarking
    (198.18/15), multicast, reserved or unspecified, nor IPv6 site-local (fec0::/10: deprecated, but still routed
    inside some sites, and Python counts it as global); an IPv6 address carrying an IPv4 one (mapped, 6to4, Teredo)
    is judged by that one."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return is_public(str(embedded))
        if ip.is_site_local:
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback
                                 or ip.is_link_local or ip.is_private)


@dataclass(frozen=True)
class Destination:
    """A callback URL resolved once: every delivery connects to `address`, the address that was checked, so a DNS
    answer that changes afterwards (rebinding) cannot send the message elsewhere."""

    scheme: str
    host: str
    port: int
    target: str  # path and query
    address: str


def pin_destination(url: str, allow_private: bool, resolver: Resolver = resolve) -> Destination:
    """Refuse URLs that are not http(s), or that resolve to any address that is not public, unless allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackRefused(f"callback URL must be http(s)://host/...: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = resolver(parts.hostname, port)
    except OSError as error:
        raise CallbackRefused(f"cannot resolve {parts.hostname}: {error}") from error
    if not addresses:
        raise CallbackRefused(f"{parts.hostname} resolves to no address")
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise CallbackRefused(f"{parts.hostname} resolves to {address}, which is not a public address "
                                      "(private, loopback, link-local, shared or reserved); set "
                                      "VISION_ASSETS_CALLBACK_ALLOW_PRIVATE=1 to allow it")
    target = parts.path or "/"
    return Destination(parts.scheme, parts.hostname, port, f"{target}?{parts.query}" if parts.query else target,
                       addresses[0])


class _PinnedHTTP(http.client.HTTPConnection):
    """Talks to `host` (its Host header) at an address chosen beforehand, instead of resolving `host` again."""

    def __init__(self, destination: Destination, timeout: float):
        super().__init__(destination.host, destination.port, timeout=timeout)
        self.address = destination.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """The same over TLS: the certificate is still verified for `host` (and sent as SNI)."""

    def __init__(self, destination: Destination, timeout: float):
        super().__init__(destination.host, destination.port, timeout=timeout, context=ssl.create_default_context())
        self.address = destination.address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


@dataclass(frozen=True)
class Quarantined:
    """A file in the outbox that is not a message the pipeline wrote (planted, or damaged), moved aside."""

    name: str  # as it was in the outbox, e.g. `~outbox/photo.png`
    moved_to: str  # its key now
    why: str


@dataclass(frozen=True)
class OutboxScan:
    pending: list[OutboxEntry]  # oldest due first
    quarantined: list[Quarantined]

    def describe_quarantined(self) -> str:
        names = ", ".join(q.name for q in self.quarantined[:5]) + (" ..." if len(self.quarantined) > 5 else "")
        return (f"moved {len(self.quarantined)} outbox file(s) that are not callback messages to "
                f"{OUTBOX_QUARANTINE}: {names} ({self.quarantined[0].why}). The other messages are delivered; "
                "look at what wrote these files, then delete them")


RESEND_COMMAND = "vision-assets callbacks resend"


class Outbox:
    """Messages waiting for delivery (`~outbox/`), and those given up on (`~outbox-dead/`, the dead letters): a
    message whose last attempt failed leaves the outbox, so the outbox holds only what is still being tried, and a
    person sees the rest (the review queue, the search service's `/api/callbacks/dead`) and resends it."""

    def __init__(self, results: ResultsStore):
        self.results = results
        self.prefix = f"{results.prefix}{OUTBOX}"
        self.quarantine_prefix = f"{results.prefix}{OUTBOX_QUARANTINE}"
        self.dead_prefix = f"{results.prefix}{OUTBOX_DEAD}"

    def _key(self, entry: OutboxEntry) -> str:
        return f"{self.prefix}{entry.message.idempotency_key}.json"

    def _save(self, entry: OutboxEntry) -> None:
        self.results.store.put(self._key(entry), entry.model_dump_json().encode(), "application/json")

    def add(self, message: CallbackMessage) -> None:
        self._save(OutboxEntry(message=message, next_attempt_at=message.finished_at))

    def scan(self) -> OutboxScan:
        """Every message waiting; a file that is not one (anything written there by hand, a damaged entry) is moved
        to the quarantine folder instead of failing every tick, so one bad file never holds back the rest."""
        entries, quarantined = [], []
        for obj in self.results.store.list(self.prefix):
            try:
                data = self.results.store.get(obj.key)[1]
            except ObjectMissing:  # delivered meanwhile
                continue
            try:
                entries.append(OutboxEntry.model_validate_json(data))
            except ValidationError as error:
                quarantined.append(self._quarantine(obj.key, data, _first_error(error)))
        return OutboxScan(sorted(entries, key=lambda e: e.next_attempt_at), quarantined)

    def pending(self) -> list[OutboxEntry]:
        return self.scan().pending

    def _quarantine(self, key: str, data: bytes, why: str) -> Quarantined:
        name = key[len(self.prefix):]
        moved_to = f"{self.quarantine_prefix}{name}"
        self.results.store.put(moved_to, data)
        self.results.store.delete(key)
        return Quarantined(name=f"{OUTBOX}{name}", moved_to=moved_to, why=why)

    def delivered(self, entry: OutboxEntry) -> None:
        self.results.store.delete(self._key(entry))

    def failed(self, entry: OutboxEntry, error: str, now: datetime, base_backoff: timedelta,
               max_attempts: int) -> tuple[OutboxEntry, bool]:
        """The entry after this failed attempt, and whether it was the last: then it is a dead letter."""
        delay = min(base_backoff * (2**entry.attempts), MAX_BACKOFF)
        updated = entry.model_copy(update={"attempts": entry.attempts + 1, "next_attempt_at": now + delay,
                                           "last_error": error})
        if updated.attempts < max_attempts:
            self._save(updated)
            return updated, False
        self.results.store.put(f"{self.dead_prefix}{updated.message.idempotency_key}.json",
                               updated.model_dump_json().encode(), "application/json")
        self.results.store.delete(self._key(entry))
        return updated, True

    def dead_letters(self, after: str = "", limit: int = 100) -> tuple[list[OutboxEntry], bool]:
        """A page of the messages given up on, in key order from just after `after` (an idempotency key), and
        whether more follow."""
        listed = self.results.store.list_slice(self.dead_prefix, f"{self.dead_prefix}{after}.json" if after else "",
                                               limit)
        entries = [OutboxEntry.model_validate_json(self.results.store.get(obj.key)[1]) for obj in listed.objects]
        return entries, listed.truncated

    def resend(self, keys: list[str] | None, now: datetime) -> int:
        """Dead letters back into the outbox, due now with their attempts counted afresh: these idempotency keys,
        or every one (None). How many went back."""
        sent = 0
        after = ""
        while True:
            page, more = self.dead_letters(after, 1000)
            for entry in page:
                if keys is None or entry.message.idempotency_key in keys:
                    self._save(entry.model_copy(update={"attempts": 0, "next_attempt_at": now}))
                    self.results.store.delete(f"{self.dead_prefix}{entry.message.idempotency_key}.json")
                    sent += 1
            if not more or not page:
                return sent
            after = page[-1].message.idempotency_key


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"not a callback message: {first['msg']}" + (f" at {where}" if where else "")


def deliver(entry: OutboxEntry, destination: Destination, secret: str, timeout: float) -> str | None:
    """POST the message to the pinned address. None on a 2xx; otherwise why not. Redirects are never followed:
    a 3xx is a failed delivery (following one would carry the signed message wherever the receiver points)."""
    body = entry.message.model_dump_json().encode()
    timestamp = str(int(datetime.now(UTC).timestamp()))
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(body, secret, timestamp),
        TIMESTAMP_HEADER: timestamp,
        IDEMPOTENCY_HEADER: entry.message.idempotency_key,
    }
    connection_type = _PinnedHTTPS if destination.scheme == "https" else _PinnedHTTP
    connection = connection_type(destination, timeout)
    try:
        connection.request("POST", destination.target, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as error:
        return f"unreachable: {error or type(error).__name__}"
    finally:
        connection.close()
    if 300 <= response.status < 400:
        return f"HTTP {response.status}: redirect to {response.getheader('Location')!r} not followed"
    return None if 200 <= response.status < 300 else f"HTTP {response.status}"


def rejected_message(record: SourceImageRecord) -> CallbackMessage:
    return CallbackMessage(
        image_id=record.partition_key,
        batch=record.batch,
        object_key=record.object_key,
        source_uri=record.source_uri,
        status="rejected",
        failed_checks=[{"check": "images_valid", "reason": record.rejection.code.value,
                        "message": record.rejection.message}],
        idempotency_key=idempotency_key(record.partition_key, record.etag or record.sha256 or "", "rejected"),
        finished_at=datetime.now(UTC),
    )


def finished_message(source: SourceImageRecord, labels: list[dict], review: list[str], problems: list[str],
                     failed_check: str | None = None, disagreements: Sequence[str] = ()) -> CallbackMessage:
    """An image at the end of the pipeline: indexed (perhaps with labels to review, or answers CLIP contradicts), or
    failed at a later check."""
    failed = [{"check": "labels_confident", "reason": "needs_review", "message": item} for item in review]
    failed += [{"check": "committee_agrees", "reason": "clip_disagrees", "message": item} for item in disagreements]
    if problems:
        failed.append({"check": failed_check or "index_consistent", "reason": "failed", "message": "; ".join(problems)})
    status = "failed" if problems else "indexed"
    return CallbackMessage(
        image_id=source.partition_key,
        batch=source.batch,
        object_key=source.object_key,
        source_uri=source.source_uri,
        status=status,
        labels=labels,
        failed_checks=failed,
        idempotency_key=idempotency_key(source.partition_key, source.etag or source.sha256 or "", status),
        finished_at=datetime.now(UTC),
    )
