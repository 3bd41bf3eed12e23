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
