"""What this project calls on a Qdrant client, as a Protocol: `qdrant_client.QdrantClient` (a server) and
`EdgeClient` (the embedded index, edge.py) both give it, so the index code is one code for both. A new call goes
here first, then into EdgeClient; `tests/vision/index/test_edge.py` checks both classes against it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from . import qdrant_models as models


@runtime_checkable
class IndexClient(Protocol):
    def collection_exists(self, collection_name: str, /) -> bool: ...

    def create_collection(self, collection_name: str, /, vectors_config: models.VectorParams,
                          metadata: dict[str, Any] | None = None, **server_layout: Any) -> bool: ...

    def create_payload_index(self, collection_name: str, field_name: str,
                             field_schema: models.PayloadSchemaType) -> Any: ...

    def get_collection(self, collection_name: str, /) -> Any: ...

    def upsert(self, collection_name: str, points: Sequence[models.PointStruct], wait: bool = True) -> Any: ...

    def delete(self, collection_name: str, points_selector: models.PointIdsList | models.FilterSelector,
               wait: bool = True) -> Any: ...

    def retrieve(self, collection_name: str, ids: Sequence[str], with_payload: bool = True,
                 with_vectors: bool = False) -> list[Any]: ...

    def query_points(self, collection_name: str, query: Sequence[float], query_filter: models.Filter | None = None,
                     limit: int = 10, offset: int = 0, with_payload: bool = True,
                     with_vectors: bool = False, consistency: Any = None) -> Any: ...

    def scroll(self, collection_name: str, limit: int = 10, offset: Any = None,
               scroll_filter: models.Filter | None = None, with_payload: bool = True,
               with_vectors: bool = False) -> tuple[list[Any], Any]: ...

    def count(self, collection_name: str, count_filter: models.Filter | None = None, exact: bool = True) -> Any: ...

    def close(self) -> None: ...
