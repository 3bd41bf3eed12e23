"""Where a callback may go, without the pipeline: only public addresses (unless allowed), the address that was
checked and no other (DNS rebinding), and never where a redirect points. Every connection stays on loopback: public
addresses are only ever answers of a fake resolver, and connecting to them is intercepted."""

import socket
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import free_port
from vision_assets.vision.callback import CallbackMessage, CallbackRefused, OutboxEntry, deliver, pin_destination

PUBLIC = "93.184.216.34"
NOT_PUBLIC = [
    "127.0.0.1", "127.8.9.10", "0.0.0.0", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "100.127.255.254",  # carrier-grade NAT
    "198.18.0.1", "198.19.255.255",  # benchmarking
    "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
    "::1", "::", "fe80::1", "fec0::1", "feff::1", "fc00::1", "fd12:3456::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped IPv6
    "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
]
PUBLIC_ADDRESSES = [PUBLIC, "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


def answering(*addresses):
    return lambda host, port: list(addresses)


def message() -> OutboxEntry:
    now = datetime.now(UTC)
    return OutboxEntry(message=CallbackMessage(image_id="a.jpg", object_key="a.jpg", source_uri="s3://b/a.jpg",
                                               status="indexed", idempotency_key="k", finished_at=now),
                       next_attempt_at=now)


class Server:
    """A loopback HTTP server that records requests and answers with `status` and `headers`."""

    def __init__(self, status=200, headers=None):
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                server.requests.append(f"{self.command} {self.path}")
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.http.server_port
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.http.shutdown()
        self.http.server_close()


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_every_address_that_is_not_public_is_refused(address):
    with pytest.raises(CallbackRefused, match="not a public address"):
        pin_destination("https://hooks.example.com/x", allow_private=False, resolver=answering(address))
    assert pin_destination("https://hooks.example.com/x", True, answering(address)).address == address


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses_are_allowed(address):
    assert pin_destination("https://hooks.example.com/x?y=1", False, answering(address)).address == address


def test_one_bad_answer_among_good_ones_refuses_the_name():
    with pytest.raises(CallbackRefused):
        pin_destination("http://hooks.example.com/", False, answering(PUBLIC, "127.0.0.1"))


def test_dns_rebinding_cannot_reach_loopback(monkeypatch):
    """The name answers a public address when checked and 127.0.0.1 afterwards: the delivery connects to the checked
    address (intercepted here: nothing leaves the machine) and never to the loopback receiver."""
    receiver = Server()
    answers = iter([[PUBLIC], ["127.0.0.1"], ["127.0.0.1"]])
    lookups = []

    def rebinding(host, port):
        lookups.append(host)
        return next(answers)

    connected = []

    def intercepted(address, timeout=None, *args, **kwargs):
        connected.append(address)
        raise ConnectionRefusedError("intercepted by the test")

    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("the name was resolved again"))
    try:
        destination = pin_destination(f"http://rebind.example.com:{receiver.port}/hook", False, rebinding)
        monkeypatch.setattr(socket, "create_connection", intercepted)
        error = deliver(message(), destination, "secret", timeout=2)
    finally:
        receiver.close()
    assert lookups == ["rebind.example.com"] and connected == [(PUBLIC, receiver.port)]
    assert error.startswith("unreachable") and receiver.requests == []


def test_a_redirect_is_a_failed_delivery_never_followed():
    target = Server()
    redirecting = Server(status=302, headers={"Location": f"http://127.0.0.1:{target.port}/steal"})
    try:
        destination = pin_destination(f"http://127.0.0.1:{redirecting.port}/hook", allow_private=True)
        error = deliver(message(), destination, "secret", timeout=5)
    finally:
        redirecting.close()
        target.close()
    assert redirecting.requests == ["POST /hook"] and target.requests == []
    assert error.startswith("HTTP 302: redirect to") and "/steal" in error


def test_https_keeps_verifying_the_host_name():
    """The pinned TLS connection still checks the certificate against the URL's host: a plain-HTTP (or wrong)
    server behind it is a failed delivery, not a silent downgrade."""
    plain = Server()
    try:
        destination = pin_destination(f"https://localhost:{plain.port}/hook", True, answering("127.0.0.1"))
        error = deliver(message(), destination, "secret", timeout=5)
    finally:
        plain.close()
    assert error.startswith("unreachable") and plain.requests == []
