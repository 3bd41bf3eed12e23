"""Qdrant: embedded (a folder, the laptop default) or a server by URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from ..vision.index.vector_index import VectorIndex


class QdrantResource(dg.ConfigurableResource):
    url: str | None = None  # a Qdrant server; unset = embedded in `path`
    api_key: str | None = None
    path: str | None = None
    collection_prefix: str = ""
    upsert_batch_size: int = 256

    @contextmanager
    def open(self) -> Iterator[VectorIndex]:
        """The client lives only as long as the block: embedded Qdrant locks its folder while a client is open, so
        holding it for a whole run would lock out every other run and reader."""
        from qdrant_client import QdrantClient

        if self.url:
            client = QdrantClient(url=self.url, api_key=self.api_key)
        elif self.path:
            client = QdrantClient(path=self.path)
        else:
            raise ValueError("set a Qdrant url or an embedded path")
        try:
            yield VectorIndex(client, self.collection_prefix)
        finally:
            client.close()
