"""The embedded index in Qdrant Edge (`qdrant-edge-py`): the Qdrant engine itself, in-process, behind the part of
`QdrantClient`'s interface this project calls. Each collection is a set of Edge shards (`edge_shards.py`: a live
one that takes the writes, sealed ones compacted outside the lock), and every call here fans out over them.

Why not qdrant-client's local mode (`QdrantClient(path=...)`), the embedded default before: it reads every point of
every collection into Python objects when it opens (26 s and 2.6 GB at 100,000 points, measured here) and answers a
filter by scanning every point in Python (0.45-1.8 s at 200,000). Edge opens a shard from its mapped files in well
under a second whatever its size and answers filtered searches from payload indexes and HNSW.

What the adapter adds to Edge, and why:
- collection metadata (the embedding model, the dimension, its shards) in `<collection>.json`: Edge keeps none;
- booleans: in qdrant-edge-py 0.9.0 `MatchValue(True)` and `MatchValue(False)` match nothing (measured), so each
  boolean payload value is also stored as a keyword ("true"/"false") under `<key>__keyword`, filters on a boolean
  are answered from it, and it is stripped from every payload handed back;
- HNSW: Edge builds it only when asked (`optimize()`): `build_hnsw`, called by the `build_index_graph` job (outside
  pipeline runs, see `sensors/index_graph_sensor.py`) and by `reindex` runs, never on close. It builds the live
  shard's waiting points as a segment of their own (3-7 s per 10,000 points, whatever was indexed before); the
  points not in a graph yet are searched exactly (a few ms per 10,000).
Only the filters this project builds are translated (match a value, a range, has id); anything else is refused
loudly rather than answered wrongly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qdrant_edge as edge

from . import qdrant_models as models
from .edge_shards import DISTANCES, Compaction, EdgeBusy, MergedCopy, ShardSet

__all__ = ["EDGE_FOLDER", "DISTANCES", "Compaction", "EdgeBusy", "EdgeClient"]

EDGE_FOLDER = "edge"
BOOLEAN_SUFFIX = "__keyword"
# qdrant-client's payload schema types by their values (a str enum, as its distances: see DISTANCES) to Edge's.
SCHEMA_TYPES = {
    "keyword": edge.PayloadSchemaType.Keyword,
    "float": edge.PayloadSchemaType.Float,
    "integer": edge.PayloadSchemaType.Integer,
    "bool": edge.PayloadSchemaType.Keyword,  # on the keyword twin, see above
    "datetime": edge.PayloadSchemaType.Datetime,
    "geo": edge.PayloadSchemaType.Geo,
}
# Candidates are found on the int8 vectors and rescored on the float ones (edge_shards.py): scores stay exact.
RESCORED = edge.SearchParams(quantization=edge.QuantizationSearchParams(rescore=True))
LOWER_IS_CLOSER = {"Euclid", "Manhattan"}


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
    shards_count: int = 1


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


class EdgeClient:
    """Collections as sets of Edge shards in `root` (`<embedded folder>/edge`). One process at a time (callers
    hold `embedded_access`); `open_existing` opens every shard now, so a busy or damaged one shows at once."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._sets: dict[str, ShardSet] = {}

    # collections
    def collection_exists(self, name: str) -> bool:
        return (self.root / f"{name}.json").exists()

    def create_collection(self, name: str, vectors_config: models.VectorParams,
                          metadata: dict[str, Any] | None = None) -> bool:
        """One set of shards in this folder: a server's layout (shards, replicas, on-disk, quantization) has no
        meaning here and is not taken."""
        meta = {"size": vectors_config.size, "distance": str(vectors_config.distance.value), "metadata": metadata or {}}
        self._sets[name] = ShardSet.create(self.root, name, meta)
        return True

    def create_payload_index(self, collection_name: str, field_name: str,
                             field_schema: models.PayloadSchemaType, **_: Any) -> None:
        if field_schema == models.PayloadSchemaType.BOOL:
            field_name += BOOLEAN_SUFFIX
        self._open(collection_name).create_field_index(field_name, SCHEMA_TYPES[field_schema])

    def get_collection(self, name: str) -> CollectionInfo:
        shards = self._open(name)
        infos = [shard.shard.info() for _, shard in shards.each()]
        meta = shards.meta
        vectors = VectorsConfig(meta["size"], models.Distance(meta["distance"]))
        return CollectionInfo(CollectionConfig(CollectionParams(vectors), meta["metadata"]),
                              sum(i.points_count for i in infos), sum(i.indexed_vectors_count for i in infos),
                              sum(i.segments_count for i in infos),
                              {name.removesuffix(BOOLEAN_SUFFIX): str(index.data_type)
                               for name, index in infos[-1].payload_schema.items()}, len(infos))

    # points
    def upsert(self, collection_name: str, points: Sequence[models.PointStruct], wait: bool = True) -> None:
        self._open(collection_name).upsert(
            [edge.Point(str(p.id), list(p.vector), _with_keyword_twins(p.payload or {})) for p in points])

    def delete(self, collection_name: str, points_selector: models.PointIdsList | models.FilterSelector,
               wait: bool = True) -> None:
        shards = self._open(collection_name)
        if isinstance(points_selector, models.PointIdsList):
            shards.delete([str(p) for p in points_selector.points])
        else:
            shards.delete_matching(_filter(points_selector.filter))

    def retrieve(self, collection_name: str, ids: Sequence[str], with_payload: bool = True,
                 with_vectors: bool = False) -> list[Record]:
        found: dict[str, Record] = {}
        for _, shard in reversed(list(self._open(collection_name).each())):  # the live shard's copy first
            wanted = [str(i) for i in ids if str(i) not in found]
            for r in shard.shard.retrieve(wanted, with_payload=with_payload, with_vector=with_vectors) if wanted else []:
                found[str(r.id)] = _record(r, with_payload, with_vectors)
        return list(found.values())

    def query_points(self, collection_name: str, query: Sequence[float], query_filter: models.Filter | None = None,
                     limit: int = 10, offset: int = 0, with_payload: bool = True,
                     with_vectors: bool = False, consistency: None = None) -> QueryResponse:
        """Each shard's best `offset + limit`, merged by score (one copy of each: no `consistency` to ask)."""
        shards = self._open(collection_name)
        request = edge.QueryRequest(limit=limit + (offset or 0), query=edge.Query.Nearest(list(query)),
                                    filter=_filter(query_filter), params=RESCORED,
                                    with_payload=with_payload, with_vector=with_vectors)
        found = [point for _, shard in shards.each() for point in shard.shard.query(request)]
        found.sort(key=lambda p: p.score, reverse=models.Distance(shards.meta["distance"]) not in LOWER_IS_CLOSER)
        unique = list({str(p.id): p for p in reversed(found)}.values())[::-1]  # a point twice (see upsert): its best
        return QueryResponse([_record(p, with_payload, with_vectors, score=p.score)
                              for p in unique[offset or 0:(offset or 0) + limit]])

    def scroll(self, collection_name: str, limit: int = 10, offset: str | None = None,
               scroll_filter: models.Filter | None = None, with_payload: bool = True,
               with_vectors: bool = False) -> tuple[list[Record], str | None]:
        """Shard after shard; the offset says which shard and where in it ("<shard>/<point id>")."""
        shards = self._open(collection_name)
        names = shards.names
        at, point = (offset.split("/", 1) if offset else (names[0], None))
        if at not in names:  # that shard is gone (emptied and dropped): go on with the next one
            names, point = sorted(n for n in names if n > at) or [], None
            if not names:
                return [], None
            at = names[0]
        found: list[Record] = []
        while True:
            page, following = shards.shard(at).shard.scroll(edge.ScrollRequest(
                offset=point or None, limit=limit - len(found), filter=_filter(scroll_filter),
                with_payload=with_payload, with_vector=with_vectors))
            found += [_record(r, with_payload, with_vectors) for r in page]
            later = shards.names[shards.names.index(at) + 1:]
            if following is not None:
                return found, f"{at}/{following}"
            if not later:
                return found, None
            at, point = later[0], None
            if len(found) >= limit:
                return found, f"{at}/"

    def count(self, collection_name: str, count_filter: models.Filter | None = None, exact: bool = True) -> CountResult:
        request = edge.CountRequest(exact=True, filter=_filter(count_filter))
        return CountResult(sum(shard.shard.count(request) for _, shard in self._open(collection_name).each()))

    # the graph and the shards
    def build_hnsw(self, name: str) -> float:
        """Build the live shard's waiting points into its graph now (sealing it once full); seconds taken."""
        started = time.perf_counter()
        shards = self._open(name)
        shards.live.shard.optimize()
        shards.seal_if_full()
        return time.perf_counter() - started

    def unindexed(self, name: str) -> int:
        """Points of the collection not in an HNSW graph yet."""
        infos = [shard.shard.info() for _, shard in self._open(name).each()]
        return sum(info.points_count - info.indexed_vectors_count for info in infos)

    def unmerged(self, name: str) -> int:
        """Sealed shards of the collection waiting for `compact_index_op`."""
        return len(self._open(name).unmerged())

    def begin_compaction(self) -> Compaction | None:
        """The first collection's sealed shard that needs merging, recorded (see edge_shards.py)."""
        for meta_file in sorted(self.root.glob("*.json")):
            if (record := self._open(meta_file.stem).begin_compaction()) is not None:
                return record
        return None

    def finish_compaction(self, record: Compaction, merged: MergedCopy) -> bool:
        return self._open(record.collection).finish_compaction(record, merged)

    def abandon_compaction(self, record: Compaction) -> None:
        """A compaction that failed or could not copy its shard at rest, given up (the next run tries again)."""
        shards = self._open(record.collection)
        if shards.compacting == record:
            shards.discard(record)

    # lifetime
    def open_existing(self) -> EdgeClient:
        for meta_file in sorted(self.root.glob("*.json")):
            for _ in self._open(meta_file.stem).each():
                pass
        return self

    def close(self) -> None:
        sets, self._sets = list(self._sets.values()), {}
        for shards in sets:
            shards.close()

    def _open(self, name: str) -> ShardSet:
        if name not in self._sets:
            if not self.collection_exists(name):
                raise ValueError(f"Collection {name} not found")
            shards = ShardSet.read(self.root, name)
            shards.recover()
            self._sets[name] = shards
        return self._sets[name]


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
