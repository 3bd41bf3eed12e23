"""The embedded index in Qdrant Edge (`qdrant-edge-py`): the Qdrant engine itself, in-process, one shard per
collection under `<folder>/edge/`, behind the part of `QdrantClient`'s interface this project calls.

Why not qdrant-client's local mode (`QdrantClient(path=...)`), the embedded default before: it reads every point of
every collection into Python objects when it opens (26 s and 2.6 GB at 100,000 points, measured here) and answers a
filter by scanning every point in Python (0.45-1.8 s at 200,000). Edge opens a shard from its mapped files in well
under a second whatever its size and answers filtered searches from payload indexes and HNSW.

What the adapter adds to Edge, and why:
- collection metadata (the embedding model, the dimension) in `<collection>.json` beside each shard: Edge keeps none;
- booleans: in qdrant-edge-py 0.9.0 `MatchValue(True)` and `MatchValue(False)` match nothing (measured), so each
  boolean payload value is also stored as a keyword ("true"/"false") under `<key>__keyword`, filters on a boolean
  are answered from it, and it is stripped from every payload handed back;
- HNSW: Edge builds it only when asked (`optimize()`): `build_hnsw`, called by the `build_index_graph` job (outside
  pipeline runs, see `sensors/index_graph_sensor.py`) and by `reindex` runs, never on close. The points not in a
  graph yet are searched exactly (a few ms per 10,000).
- Segments: a build makes a segment of its own instead of merging the new points into one graph, which rebuilds
  all of it (measured: 20,000 new points took 12.6 s into an empty collection, 34 s next to 20,000 indexed ones,
  53 s next to 40,000; with a segment each, 4.9-5.9 s per 10,000 whatever was indexed before). Past `SEGMENTS`
  segments Edge merges the smallest, into segments of at most `MAX_SEGMENT_POINTS` points.
Only the filters this project builds are translated (match a value, a range, has id); anything else is refused
loudly rather than answered wrongly.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qdrant_edge as edge
from qdrant_client import models

EDGE_FOLDER = "edge"
BOOLEAN_SUFFIX = "__keyword"
# Segments cost a fresh process ~40 ms each to open (mostly the payload indexes: 17 per segment), and a merge
# holds the index while it rebuilds: past SEGMENTS, Edge merges the smallest segments, into at most
# MAX_SEGMENT_POINTS points, so a million points stay about 20 segments and no merge rebuilds more than that.
SEGMENTS = 24
MAX_SEGMENT_POINTS = 50_000  # a merge past SEGMENTS rebuilds at most this many points (Edge counts it in KB)
SCHEMA_TYPES = {
    models.PayloadSchemaType.KEYWORD: edge.PayloadSchemaType.Keyword,
    models.PayloadSchemaType.FLOAT: edge.PayloadSchemaType.Float,
    models.PayloadSchemaType.INTEGER: edge.PayloadSchemaType.Integer,
    models.PayloadSchemaType.BOOL: edge.PayloadSchemaType.Keyword,  # on the keyword twin, see above
    models.PayloadSchemaType.DATETIME: edge.PayloadSchemaType.Datetime,
    models.PayloadSchemaType.GEO: edge.PayloadSchemaType.Geo,
}
DISTANCES = {models.Distance.COSINE: edge.Distance.Cosine, models.Distance.DOT: edge.Distance.Dot,
             models.Distance.EUCLID: edge.Distance.Euclid, models.Distance.MANHATTAN: edge.Distance.Manhattan}


class EdgeBusy(RuntimeError):
    """Another process has the shard open (Edge holds its write-ahead log exclusively)."""


# What `QdrantClient.get_collection`, `.count` and `.query_points` return, as far as this project reads them.
@dataclass(frozen=True)
class VectorsConfig:
    size: int
    distance: models.Distance


@dataclass(frozen=True)
class CollectionParams:
    vectors: VectorsConfig


@dataclass(frozen=True)
class CollectionConfig:
    params: CollectionParams
    metadata: dict[str, Any]


@dataclass(frozen=True)
class CollectionInfo:
    config: CollectionConfig
    points_count: int
    indexed_vectors_count: int
    segments_count: int
    payload_schema: dict[str, str]  # indexed field -> Edge's type name (a boolean's: Keyword, on its twin)


@dataclass(frozen=True)
class CountResult:
    count: int


@dataclass(frozen=True)
class Record:
    id: str
    payload: dict[str, Any] | None
    vector: list[float] | None
    score: float = 0.0


@dataclass(frozen=True)
class QueryResponse:
    points: list[Record]


@dataclass
class Shard:
    shard: Any  # edge.EdgeShard
    meta: dict[str, Any]
    written: bool = False


class EdgeClient:
    """Collections as Edge shards in `root` (`<embedded folder>/edge`). One process at a time (callers hold
    `embedded_access`); `open_existing` opens every collection now, so a busy or damaged shard shows at once."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, Shard] = {}

    # collections
    def collection_exists(self, name: str) -> bool:
        return (self.root / f"{name}.json").exists()

    def create_collection(self, name: str, vectors_config: models.VectorParams,
                          metadata: dict[str, Any] | None = None) -> bool:
        folder = self.root / name
        shutil.rmtree(folder, ignore_errors=True)  # a creation that died before its metadata was written
        # Edge's optimizer indexes a segment only past `indexing_threshold` (KB of vectors); when it runs at all is
        # decided here (`close`), so whatever is unindexed then is indexed.
        # Vectors stay in their mapped file (Memory.Cold): Edge's default reads them all into memory on open
        # (10.6 s and 2.8 GB at 1,000,000 points; 0.75 s and 0.2 GB at 100,000 with Cold), the page cache keeps
        # what searches touch. payload_m=0: no extra graph links per payload-index value (Qdrant's default builds
        # them for every indexed field: 91 s instead of 32 s at 50,000 points with this project's payload indexes,
        # and filtered searches measured the same, 1-4 ms p95; bench/scale_bench.py). Otherwise Qdrant's defaults.
        segment_kb = max(1, MAX_SEGMENT_POINTS * vectors_config.size * 4 // 1024)  # float32 vectors
        config = edge.EdgeConfig(vectors=edge.EdgeVectorParams(size=vectors_config.size,
                                                               distance=DISTANCES[vectors_config.distance],
                                                               memory=edge.Memory.Cold),
                                 hnsw_config=edge.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000,
                                                                  payload_m=0),
                                 optimizers=edge.EdgeOptimizersConfig(indexing_threshold=1,
                                                                      default_segment_number=SEGMENTS,
                                                                      max_segment_size=segment_kb))
        shard = edge.EdgeShard.create(str(folder), config)
        meta = {"size": vectors_config.size, "distance": str(vectors_config.distance.value), "metadata": metadata or {}}
        self._shards[name] = Shard(shard, meta)
        self._write_meta(name)
        return True

    def create_payload_index(self, collection_name: str, field_name: str,
                             field_schema: models.PayloadSchemaType, **_: Any) -> None:
        shard = self._open(collection_name)
        if field_schema == models.PayloadSchemaType.BOOL:
            field_name += BOOLEAN_SUFFIX
        shard.shard.update(edge.UpdateOperation.create_field_index(field_name, SCHEMA_TYPES[field_schema]))

    def get_collection(self, name: str) -> CollectionInfo:
        shard = self._open(name)
        info = shard.shard.info()
        vectors = VectorsConfig(shard.meta["size"], models.Distance(shard.meta["distance"]))
        return CollectionInfo(CollectionConfig(CollectionParams(vectors),
                                               shard.meta["metadata"]),
                              info.points_count, info.indexed_vectors_count, info.segments_count,
                              {name.removesuffix(BOOLEAN_SUFFIX): str(index.data_type)
                               for name, index in info.payload_schema.items()})

    # points
    def upsert(self, collection_name: str, points: Sequence[models.PointStruct], wait: bool = True) -> None:
        shard = self._open(collection_name)
        shard.shard.update(edge.UpdateOperation.upsert_points(
            [edge.Point(str(p.id), list(p.vector), _with_keyword_twins(p.payload or {})) for p in points]))
        shard.written = True

    def delete(self, collection_name: str, points_selector: models.PointIdsList | models.FilterSelector,
               wait: bool = True) -> None:
        shard = self._open(collection_name)
        if isinstance(points_selector, models.PointIdsList):
            operation = edge.UpdateOperation.delete_points([str(p) for p in points_selector.points])
        else:
            operation = edge.UpdateOperation.delete_points_by_filter(_filter(points_selector.filter))
        shard.shard.update(operation)
        shard.written = True

    def retrieve(self, collection_name: str, ids: Sequence[str], with_payload: bool = True,
                 with_vectors: bool = False) -> list[Record]:
        found = self._open(collection_name).shard.retrieve([str(i) for i in ids], with_payload=with_payload,
                                                           with_vector=with_vectors)
        return [_record(r, with_payload, with_vectors) for r in found]

    def query_points(self, collection_name: str, query: Sequence[float], query_filter: models.Filter | None = None,
                     limit: int = 10, offset: int = 0, with_payload: bool = True,
                     with_vectors: bool = False) -> QueryResponse:
        shard = self._open(collection_name)
        found = shard.shard.query(edge.QueryRequest(
            limit=limit, offset=offset or None, query=edge.Query.Nearest(list(query)),
            filter=_filter(query_filter),
            with_payload=with_payload, with_vector=with_vectors))
        return QueryResponse([_record(p, with_payload, with_vectors, score=p.score) for p in found])

    def scroll(self, collection_name: str, limit: int = 10, offset: str | None = None,
               scroll_filter: models.Filter | None = None, with_payload: bool = True,
               with_vectors: bool = False) -> tuple[list[Record], str | None]:
        shard = self._open(collection_name)
        found, next_offset = shard.shard.scroll(edge.ScrollRequest(
            offset=offset, limit=limit, filter=_filter(scroll_filter),
            with_payload=with_payload, with_vector=with_vectors))
        return [_record(r, with_payload, with_vectors) for r in found], None if next_offset is None else str(next_offset)

    def count(self, collection_name: str, count_filter: models.Filter | None = None, exact: bool = True) -> CountResult:
        shard = self._open(collection_name)
        return CountResult(shard.shard.count(edge.CountRequest(
            exact=True, filter=_filter(count_filter))))

    # lifetime
    def open_existing(self) -> EdgeClient:
        for meta_file in sorted(self.root.glob("*.json")):
            self._open(meta_file.stem)
        return self

    def build_hnsw(self, name: str) -> float:
        """Build (or extend) the collection's HNSW now; seconds taken."""
        started = time.perf_counter()
        self._open(name).shard.optimize()
        return time.perf_counter() - started

    def unindexed(self, name: str) -> int:
        """Points of the collection not in an HNSW graph yet."""
        info = self._open(name).shard.info()
        return info.points_count - info.indexed_vectors_count

    def close(self) -> None:
        for shard in self._shards.values():
            try:
                if shard.written:
                    shard.shard.flush()
            finally:
                shard.shard.close()
        self._shards.clear()

    def _open(self, name: str) -> Shard:
        if name not in self._shards:
            meta_file = self.root / f"{name}.json"
            if not meta_file.exists():
                raise ValueError(f"Collection {name} not found")
            meta = json.loads(meta_file.read_text())
            try:
                shard = edge.EdgeShard.load(str(self.root / name))
            except Exception as error:  # Edge raises bare Exceptions; its text says what happened
                if "WouldBlock" in str(error):
                    raise EdgeBusy(f"{self.root / name} is open in another process: {error}") from error
                raise
            self._shards[name] = Shard(shard, meta)
        return self._shards[name]

    def _write_meta(self, name: str) -> None:
        temporary = self.root / f"{name}.json.tmp"
        temporary.write_text(json.dumps(self._shards[name].meta))
        os.replace(temporary, self.root / f"{name}.json")


def _with_keyword_twins(payload: dict[str, Any]) -> dict[str, Any]:
    twins = {f"{key}{BOOLEAN_SUFFIX}": "true" if value else "false"
             for key, value in payload.items() if isinstance(value, bool)}
    return {**payload, **twins}


def _without_keyword_twins(payload: dict[str, Any] | None) -> dict[str, Any] | None:
    if payload is None:
        return None
    return {key: value for key, value in payload.items() if not key.endswith(BOOLEAN_SUFFIX)}


def _record(found: Any, with_payload: bool, with_vectors: Any, score: float = 0.0) -> Record:
    vector = found.vector if with_vectors else None
    if isinstance(vector, dict):  # named vectors: ours is the unnamed one
        vector = vector.get("")
    return Record(str(found.id), _without_keyword_twins(found.payload) if with_payload else None,
                  list(vector) if vector is not None else None, score)


def _filter(query_filter: models.Filter | None) -> edge.Filter | None:
    if query_filter is None:
        return None

    def conditions(items: Any) -> list[Any] | None:
        if items is None:
            return None
        return [_condition(item) for item in (items if isinstance(items, list) else [items])]

    return edge.Filter(must=conditions(query_filter.must), should=conditions(query_filter.should),
                       must_not=conditions(query_filter.must_not))


def _condition(condition: Any) -> Any:
    if isinstance(condition, models.HasIdCondition):
        return edge.HasIdCondition({str(point_id) for point_id in condition.has_id})
    if isinstance(condition, models.Filter):
        return _filter(condition)
    if isinstance(condition, models.FieldCondition):
        if isinstance(condition.match, models.MatchValue) and condition.range is None:
            value = condition.match.value
            if isinstance(value, bool):
                return edge.FieldCondition(f"{condition.key}{BOOLEAN_SUFFIX}",
                                           match=edge.MatchValue("true" if value else "false"))
            return edge.FieldCondition(condition.key, match=edge.MatchValue(value))
        if isinstance(condition.range, models.Range) and condition.match is None:
            r = condition.range
            return edge.FieldCondition(condition.key, range=edge.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt))
        if isinstance(condition.range, models.DatetimeRange) and condition.match is None:
            r = condition.range
            stamp = lambda value: value.isoformat() if hasattr(value, "isoformat") else value
            return edge.FieldCondition(condition.key, range=edge.RangeDateTime(
                gte=stamp(r.gte), gt=stamp(r.gt), lte=stamp(r.lte), lt=stamp(r.lt)))
        if condition.geo_radius is not None and condition.match is None and condition.range is None:
            center = condition.geo_radius.center
            return edge.FieldCondition(condition.key, geo_radius=edge.GeoRadius(
                edge.GeoPoint(lon=center.lon, lat=center.lat), condition.geo_radius.radius))
    raise NotImplementedError(f"the embedded index does not translate this filter condition: {condition!r}")
