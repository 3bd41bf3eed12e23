"""Qdrant: embedded (Qdrant Edge in a folder, the laptop default) or a server by URL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg

from ..settings import DEFAULTS
from ..vision.index.connection import HeldEmbedded, embedded_access, open_embedded, server_faults
from ..vision.index.server_layout import ServerLayout
from ..vision.index.vector_index import VectorIndex

_told_layout_ignored = False  # once per process: every run would otherwise repeat it


class QdrantResource(dg.ConfigurableResource):
    url: str | None = None  # a Qdrant server; unset = embedded in `path`
    api_key: str | None = None
    path: str | None = None
    collection_prefix: str = DEFAULTS.qdrant_collection_prefix
    upsert_batch_size: int = 256
    lock_wait_seconds: float = DEFAULTS.qdrant_lock_wait_seconds  # embedded only: how long to wait for another process's turn
    # Embedded only: the `build_index_graph` job is launched (and a `reindex` run builds as it goes) once this many
    # points are not in an HNSW graph; no pipeline run or search builds one.
    hnsw_threshold: int = DEFAULTS.qdrant_hnsw_threshold
    # A server's layout of the collections it creates, and its read consistency: `ServerLayout`'s fields.
    shards: int | None = DEFAULTS.qdrant_shards
    replication_factor: int = DEFAULTS.qdrant_replication_factor
    write_consistency_factor: int = DEFAULTS.qdrant_write_consistency_factor
    on_disk: bool = DEFAULTS.qdrant_on_disk
    quantization: str = DEFAULTS.qdrant_quantization
    read_consistency: str = DEFAULTS.qdrant_read_consistency

    @property
    def layout(self) -> ServerLayout:
        return ServerLayout(shards=self.shards, replication_factor=self.replication_factor,
                            write_consistency_factor=self.write_consistency_factor, on_disk=self.on_disk,
                            quantization=self.quantization, read_consistency=self.read_consistency)  # type: ignore[arg-type]

    @property
    def where(self) -> str:
        return self.url or f"embedded at {self.path}"

    def held(self) -> HeldIndex:
        """For a long-lived reader (the search service): the index kept open between uses; see `HeldIndex`."""
        return HeldIndex(self)

    @contextmanager
    def open(
        self, on_wait: Callable[[str], None] = lambda _: None, wait_seconds: float | None = None
    ) -> Iterator[VectorIndex]:
        """The client lives only as long as the block: embedded Qdrant admits one process at a time, so holding it
        for a whole run would lock out every other run and every search. `on_wait` hears once if we must wait, and
        what the embedded index does meanwhile that takes time (moving a local-mode folder over)."""
        from qdrant_client import QdrantClient

        wait = self.lock_wait_seconds if wait_seconds is None else wait_seconds
        if self.url:
            with server_faults(self.url):
                client = QdrantClient(url=self.url, api_key=self.api_key)
                try:
                    yield VectorIndex(client, self.collection_prefix, self.layout)
                finally:
                    client.close()
        elif self.path:
            self._say_layout_ignored(on_wait)
            with embedded_access(self.path, wait, on_wait):
                client = open_embedded(self.path, wait, tell=on_wait)
                try:
                    yield VectorIndex(client, self.collection_prefix)
                finally:
                    client.close()
        else:
            raise ValueError("set a Qdrant url or an embedded path")

    def _say_layout_ignored(self, tell: Callable[[str], None]) -> None:
        global _told_layout_ignored
        if _told_layout_ignored or not (given := self.layout.differs_from_default()):
            return
        _told_layout_ignored = True
        tell(f"{', '.join(given)}: for a Qdrant server (VISION_ASSETS_QDRANT_URL); the embedded index is one shard "
             "in one folder on this machine and ignores them")


class HeldIndex:
    """The index for a long-lived reader: a server's client kept (queries run concurrently), or the embedded folder
    kept open between queries and let go whenever a run or another search waits for it (`HeldEmbedded`)."""

    def __init__(self, resource: QdrantResource):
        from qdrant_client import QdrantClient

        self._resource = resource
        self._server = QdrantClient(url=resource.url, api_key=resource.api_key) if resource.url else None
        self.embedded = None if resource.url else HeldEmbedded(str(resource.path), resource.lock_wait_seconds)

    @contextmanager
    def use(self, on_wait: Callable[[str], None] = lambda _: None) -> Iterator[VectorIndex]:
        if self._server is not None:
            with server_faults(str(self._resource.url)):
                yield VectorIndex(self._server, self._resource.collection_prefix, self._resource.layout)
        else:
            with self.embedded.use(on_wait) as client:
                yield VectorIndex(client, self._resource.collection_prefix)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        else:
            self.embedded.close()
