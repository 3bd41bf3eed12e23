"""A loopback HTTP stub of a Qdrant server's REST API, recording every request.

A stub, not a server: no Qdrant server binary can be installed on this machine (it is not on PyPI, Debian or npm,
and nothing else is reachable), and embedded Qdrant (Edge) takes no cluster settings. What the suite needs from a
server is to see exactly what the real `qdrant_client.QdrantClient` sends it (the layout of a new collection, the
read consistency of a search), so the stub answers the few calls the index code makes with the shapes Qdrant's
OpenAPI gives, keeps what was created and written, and records each request's method, path, query and body.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

VERSION = "1.20.0"  # the server version qdrant-client 1.20 expects (no compatibility warning)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class QdrantStub:
    requests: list[Recorded] = field(default_factory=list)
    collections: dict[str, dict] = field(default_factory=dict)  # name: the body it was created with
    indexes: dict[str, dict[str, str]] = field(default_factory=dict)
    points: dict[str, dict[str, dict]] = field(default_factory=dict)

    def start(self) -> str:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def _answer(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                stub.requests.append(Recorded(self.command, parts.path, parse_qs(parts.query), body))
                status, result = stub.answer(self.command, parts.path, body)
                if parts.path == "/":  # the version, unwrapped, as Qdrant answers it
                    payload = json.dumps(result).encode()
                else:
                    payload = json.dumps({"result": result, "status": "ok", "time": 0.0} if status == 200 else
                                         {"status": {"error": result}, "time": 0.0}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def sent(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def answer(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if path == "/":
            return 200, {"title": "qdrant - vector search engine", "version": VERSION}
        match = re.fullmatch(r"/collections/([^/]+)(/.*)?", path)
        if not match:
            return 404, f"no route {method} {path}"
        name, rest = match.group(1), match.group(2) or ""
        if (method, rest) == ("GET", "/exists"):
            return 200, {"exists": name in self.collections}
        if (method, rest) == ("PUT", ""):
            self.collections[name], self.indexes[name], self.points[name] = body, {}, {}
            return 200, True
        if name not in self.collections:
            return 404, f"Not found: Collection `{name}` doesn't exist!"
        if (method, rest) == ("GET", ""):
            return 200, self._info(name)
        if (method, rest) == ("PUT", "/index"):
            self.indexes[name][body["field_name"]] = body["field_schema"]
            return 200, {"operation_id": 0, "status": "completed"}
        if (method, rest) == ("PUT", "/points"):
            self.points[name].update({str(p["id"]): p for p in body["points"]})
            return 200, {"operation_id": 0, "status": "completed"}
        if (method, rest) == ("POST", "/points"):  # retrieve by id
            return 200, [{"id": i, "payload": self.points[name][i]["payload"]} for i in body["ids"]
                         if i in self.points[name]]
        if (method, rest) == ("POST", "/points/query"):
            found = list(self.points[name].values())[: body.get("limit", 10)]
            return 200, {"points": [{"id": p["id"], "version": 0, "score": 1.0 - n / 100, "payload": p["payload"]}
                                    for n, p in enumerate(found)]}
        return 404, f"the stub has no route {method} {path}"

    def _info(self, name: str) -> dict:
        created = self.collections[name]
        params = {key: created[key] for key in ("vectors", "shard_number", "replication_factor",
                                               "write_consistency_factor", "on_disk_payload") if key in created}
        return {
            "status": "green", "optimizer_status": "ok", "segments_count": 1, "points_count": len(self.points[name]),
            "indexed_vectors_count": 0,
            "config": {
                "params": params,
                "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000},
                "optimizer_config": {"default_segment_number": 0, "flush_interval_sec": 5},
                "quantization_config": created.get("quantization_config"),
                "metadata": created.get("metadata"),
            },
            "payload_schema": {field_name: {"data_type": schema, "points": 0}
                               for field_name, schema in self.indexes[name].items()},
        }
