"""Faults to inject: a TCP proxy on loopback that can stop answering, to put a real service (moto's S3 server)
out of reach for a while the way a network outage does."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress


class OutageProxy:
    """Forwards 127.0.0.1:port to a target. `outage()` refuses new connections and cuts open ones (keep-alive
    pools included) until `restore()`."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = _free_port()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.refused_since: float | None = None
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        self.refused_since = None
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def outage(self) -> None:
        self.refused_since = time.monotonic()
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            with suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            # Shut down only: the pipe threads close their sockets. Closing here would free a descriptor that a
            # pipe thread may still write to after it is reused by a new connection, silently losing a request
            # (seen as a client waiting out its 60 s read timeout instead of an outage).
            for connection in self._open:
                with suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._open.clear()

    def close(self) -> None:
        self.outage()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # the outage began while this connection was being set up
                    for end in (client, upstream):
                        with suppress(OSError):
                            end.shutdown(socket.SHUT_RDWR)
                        end.close()
                    continue
                self._open |= {client, upstream}
            done: list[socket.socket] = []  # the pair's pipes that have ended: the second one closes both
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink, done), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, done: list[socket.socket]) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):  # wakes the other pipe of the pair
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
            with self._lock:
                done.append(source)
                last = len(done) == 2
                if last:
                    self._open -= {source, sink}
            if last:  # only now: the other pipe no longer uses either descriptor
                source.close()
                sink.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FlakyStoreProxy:
    """An HTTP proxy in front of an S3 endpoint (moto's server) that answers a share of the requests the way a flaky
    store does: a 5xx (`errors`), a connection reset with no answer (`resets`), or an answer held back for
    `delay_seconds` (`delays`); the rest are forwarded. Seeded, so a run meets the same faults each time.
    `delay_first_asks`: instead of dice, the first request for each method and path is held back, and asking again
    is answered at once (a stall, deterministic)."""

    def __init__(self, target: str, errors: float = 0.2, resets: float = 0.05, delays: float = 0.1,
                 delay_seconds: float = 5.0, seed: int = 0, delay_first_asks: bool = False):
        import random
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.target = urlsplit(target)
        self.errors, self.resets, self.delays, self.delay_seconds = errors, resets, delays, delay_seconds
        self._dice = random.Random(seed)
        self._asked: set[tuple[str, str]] | None = set() if delay_first_asks else None
        self._lock = threading.Lock()
        self.faults = {"error": 0, "reset": 0, "delay": 0, "forwarded": 0}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._roll(self.command, self.path)
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "error":
                    payload = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
                               b"<Message>injected by the test proxy</Message></Error>")
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if fault == "delay":
                    time.sleep(proxy.delay_seconds)
                proxy._forward(self, body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client that gave up on a stalled answer
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _roll(self, method: str, path: str) -> str:
        with self._lock:
            if self._asked is not None:
                fault = "forwarded" if (method, path) in self._asked else "delay"
                self._asked.add((method, path))
                self.faults[fault] += 1
                return fault
            roll = self._dice.random()
            fault = ("error" if roll < self.errors else "reset" if roll < self.errors + self.resets
                     else "delay" if roll < self.errors + self.resets + self.delays else "forwarded")
            self.faults[fault] += 1
            return fault

    def _forward(self, handler, body: bytes) -> None:
        import http.client

        upstream = http.client.HTTPConnection(self.target.hostname, self.target.port, timeout=60)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("connection", "keep-alive")}
            upstream.request(handler.command, handler.path, body=body or None, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        handler.send_response(answer.status)
        head = handler.command == "HEAD"  # its Content-Length is the object's, with no body
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "date", "server") and (
                    head or name.lower() != "content-length"):
                handler.send_header(name, value)
        if not head:
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
