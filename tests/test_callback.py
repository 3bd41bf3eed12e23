"""The completion callback against a real HTTP server on loopback: signed, idempotent, retried, never blocking."""

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from tests.conftest import PIPELINE_VALID, free_port
from vision_assets.resources import CallbackSettings
from vision_assets.sensors.callback_sensor import callback_sensor
from vision_assets.vision.callback import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CallbackRefused,
    Outbox,
    idempotency_key,
    pin_destination,
)

pytestmark = pytest.mark.slow  # see docs/testing.md: `uv run pytest -m "not slow"` leaves it out

SECRET = "s3cret"


class Receiver:
    """A webhook receiver: records what it is sent, answers with `status`."""

    def __init__(self):
        self.received: list[tuple[dict, dict]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), json.loads(body) | {"_raw": body.decode()}))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/vision"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.close()


@pytest.fixture
def callback_settings(receiver):  # overrides conftest's: the pipeline writes messages for this receiver
    return CallbackSettings(url=receiver.url, secret=SECRET, allow_private=True, base_backoff_seconds=0)


def tick(driver, settings):
    with dg.build_sensor_context(instance=driver.instance,
                                 resources={"image_store": driver.defs.resources["image_store"],
                                            "callback": settings}) as context:
        return callback_sensor(context)


def valid_signature(headers: dict, raw: str) -> bool:
    expected = hmac.new(SECRET.encode(), headers[TIMESTAMP_HEADER].encode() + b"." + raw.encode(), hashlib.sha256)
    return hmac.compare_digest(headers[SIGNATURE_HEADER], "sha256=" + expected.hexdigest())


def test_every_finished_image_is_announced_once_signed(pipeline, receiver, callback_settings, s3_image_store):
    driver, run = pipeline
    assert run.success
    assert len(Outbox(s3_image_store.results).pending()) == 4  # written by the run, sent by the sensor
    result = tick(driver, callback_settings)
    by_image = {body["image_id"]: (headers, body) for headers, body in receiver.received}
    assert set(by_image) == {*PIPELINE_VALID, "corrupt.jpg"}
    for headers, body in by_image.values():
        assert valid_signature(headers, body["_raw"])
        assert headers[IDEMPOTENCY_HEADER] == body["idempotency_key"]
    corrupt = by_image["corrupt.jpg"][1]
    assert corrupt["status"] == "rejected" and corrupt["failed_checks"][0]["check"] == "images_valid"
    assert corrupt["failed_checks"][0]["reason"] == "corrupt"
    bus = by_image["bus.jpg"][1]
    assert bus["status"] == "indexed" and bus["source_uri"].endswith("uploads/bus.jpg") and bus["labels"]
    assert bus["object_key"] == "uploads/bus.jpg"  # the raw key beside the percent-encoded URI
    assert bus["batch"] == corrupt["batch"] == driver.batches[0]  # the Dagster partition it was processed in
    assert Outbox(s3_image_store.results).pending() == []
    assert {e.metadata["callback"].value for e in result.asset_events} == {"delivered"}
    # shown on the batch in the UI, each naming its image
    assert {e.partition for e in result.asset_events} == {driver.batches[0]}
    assert {e.metadata["image"].value for e in result.asset_events} == {*PIPELINE_VALID, "corrupt.jpg"}
    assert isinstance(tick(driver, callback_settings), dg.SkipReason)  # nothing left to send


def test_a_receiver_that_is_down_gets_the_messages_later(pipeline, receiver, callback_settings, s3_image_store):
    driver, _ = pipeline
    receiver.status = 503
    failed = tick(driver, callback_settings)
    assert {e.metadata["callback"].value for e in failed.asset_events} == {"failed, will retry"}  # shown in the UI
    pending = Outbox(s3_image_store.results).pending()
    assert len(pending) == 4 and {e.attempts for e in pending} <= {0, 1} and any(e.last_error for e in pending)
    first_keys = {headers[IDEMPOTENCY_HEADER] for headers, _ in receiver.received}
    receiver.status = 200
    for _ in range(4):
        if not Outbox(s3_image_store.results).pending():
            break
        tick(driver, callback_settings)
    assert Outbox(s3_image_store.results).pending() == []
    delivered = [headers[IDEMPOTENCY_HEADER] for headers, _ in receiver.received[len(first_keys):]]
    assert first_keys <= set(delivered)  # retried with the same idempotency key: the receiver can de-duplicate


def test_a_foreign_file_in_the_outbox_is_quarantined_and_the_rest_delivered(pipeline, receiver, callback_settings,
                                                                          s3_image_store, capfd):
    """A PNG someone put in `~outbox/` and a damaged entry used to fail every tick (pydantic's error), so nothing
    was delivered until a person found and deleted them. They are moved aside, named in the tick's log."""
    driver, _ = pipeline
    results = s3_image_store.results
    outbox = f"{results.prefix}~outbox/"
    results.store.put(f"{outbox}holiday.png", b"\x89PNG\r\n\x1a\n not a message")
    results.store.put(f"{outbox}damaged.json", b'{"message": {"image_id": "x"}}')
    capfd.readouterr()
    result = tick(driver, callback_settings)
    log = capfd.readouterr()  # the sensor's log: the tick's log in the UI, the daemon's console here
    assert {body["image_id"] for _, body in receiver.received} == {*PIPELINE_VALID, "corrupt.jpg"}
    assert {e.metadata["callback"].value for e in result.asset_events} == {"delivered"}
    [warning] = [line for line in (log.out + log.err).splitlines() if "not callback messages" in line]
    assert "moved 2 outbox file(s)" in warning and "~outbox/holiday.png" in warning and "~outbox/damaged.json" in warning
    quarantine = sorted(o.key for o in results.store.list(f"{results.prefix}~outbox-quarantine/"))
    assert quarantine == [f"{results.prefix}~outbox-quarantine/damaged.json",
                          f"{results.prefix}~outbox-quarantine/holiday.png"]
    assert results.store.get(quarantine[1])[1].startswith(b"\x89PNG")  # kept as it was, for a person to look at
    assert list(results.store.list(outbox)) == []
    assert isinstance(tick(driver, callback_settings), dg.SkipReason)


def test_private_receivers_are_refused_unless_allowed(pipeline, receiver, callback_settings, s3_image_store):
    driver, _ = pipeline
    refused = tick(driver, CallbackSettings(url=receiver.url, secret=SECRET, allow_private=False))
    assert isinstance(refused, dg.SkipReason) and "private" in refused.skip_message
    assert receiver.received == [] and len(Outbox(s3_image_store.results).pending()) == 4
    for url in ["http://127.0.0.1/x", "http://10.1.2.3/x", "http://169.254.169.254/latest/meta-data"]:
        with pytest.raises(CallbackRefused):
            pin_destination(url, allow_private=False)
    with pytest.raises(CallbackRefused):
        pin_destination("file:///etc/passwd", allow_private=True)
    assert pin_destination("http://127.0.0.1/x", allow_private=True).address == "127.0.0.1"


def test_idempotency_key_names_the_image_version_and_outcome():
    assert idempotency_key("a.jpg", "etag1", "indexed") == idempotency_key("a.jpg", "etag1", "indexed")
    assert idempotency_key("a.jpg", "etag2", "indexed") != idempotency_key("a.jpg", "etag1", "indexed")
    assert idempotency_key("a.jpg", "etag1", "rejected") != idempotency_key("a.jpg", "etag1", "indexed")


def test_a_receiver_down_for_good_leaves_dead_letters_a_person_sees_and_resends(pipeline, receiver, s3_image_store,
                                                                               monkeypatch, capsys):
    """Callbacks to a dead endpoint used to be retried hourly for ever. After VISION_ASSETS_CALLBACK_MAX_ATTEMPTS
    they leave the outbox for the dead letters: said in the UI and the tick's log, listed by the review queue, the
    search service and the CLI, and sent again by `vision-assets callbacks resend`."""
    from fastapi.testclient import TestClient

    from tests.test_unattended import cli_environment
    from vision_assets.assets.review_queue import dead_letters_shown
    from vision_assets.cli import main
    from vision_assets.service.app import Catalogue, create_app
    from vision_assets.vision.images.validation import ValidationLimits

    driver, _ = pipeline
    results = s3_image_store.results
    giving_up = CallbackSettings(url=receiver.url, secret=SECRET, allow_private=True, base_backoff_seconds=0,
                                 max_attempts=2)
    receiver.status = 503
    outcomes = []
    for _ in range(6):  # 4 messages, 3 failures a tick, 2 attempts each: then nothing is due any more
        result = tick(driver, giving_up)
        if isinstance(result, dg.SkipReason):
            break
        outcomes += [e.metadata["callback"].value for e in result.asset_events]
    assert outcomes.count("given up: a dead letter") == 4, outcomes
    outbox = Outbox(results)
    assert outbox.pending() == []
    dead, more = outbox.dead_letters()
    assert len(dead) == 4 and not more and all(e.attempts == 2 and e.last_error for e in dead)

    shown = dead_letters_shown(results)  # the review queue's metadata
    assert shown["undelivered_callbacks"].value == "4" and "callbacks resend --all" in shown["dead_letters"].value
    service = TestClient(create_app(Catalogue(None, "m", None, results, ValidationLimits())))
    page = service.get("/api/callbacks/dead", params={"limit": 3}).json()
    assert len(page["letters"]) == 3 and page["next"] and page["resend"] == "vision-assets callbacks resend --all"
    rest = service.get("/api/callbacks/dead", params={"after": page["next"]}).json()
    assert len(rest["letters"]) == 1 and rest["next"] is None

    cli_environment(monkeypatch, s3_image_store)
    assert main(["callbacks", "dead"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {entry["image_id"] for entry in listed} == {e.message.image_id for e in dead}
    assert main(["callbacks", "resend", listed[0]["idempotency_key"]]) == 0
    assert len(outbox.pending()) == 1 and outbox.pending()[0].attempts == 0
    assert main(["callbacks", "resend", "--all"]) == 0
    receiver.status = 200
    tick(driver, giving_up)
    assert outbox.pending() == [] and outbox.dead_letters()[0] == []
    assert {body["image_id"] for _, body in receiver.received[-4:]} == {e.message.image_id for e in dead}
