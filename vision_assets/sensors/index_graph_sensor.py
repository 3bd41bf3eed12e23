"""Launches `build_index_graph` when the embedded index has enough points outside its HNSW graph, or sealed shards
waiting to be merged: each `qdrant_index` run reports both (`unindexed_points`, `unmerged_shards` in its metadata),
so the sensor reads one event record a tick and never opens the index (which would take it from the search
service)."""

import dagster as dg

from ..assets.qdrant_index import UNINDEXED_POINTS, UNMERGED_SHARDS
from ..jobs import build_index_graph
from ..keys import QDRANT_INDEX
from ..resources import QdrantResource
from ..vision.cursor import Cursor

IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]


class IndexGraphCursor(Cursor):
    seen: int = 0  # the newest qdrant_index materialization looked at


def upkeep_after(instance: dg.DagsterInstance, after: int) -> tuple[int, int, int] | None:
    """(storage id, unindexed points, unmerged shards) of the newest qdrant_index materialization after `after`;
    None if none."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=QDRANT_INDEX,
                                                                    after_storage_id=after or None),
                                              limit=1, ascending=False).records
    if not records:
        return None
    metadata = records[0].asset_materialization.metadata
    figures = [metadata.get(UNINDEXED_POINTS), metadata.get(UNMERGED_SHARDS)]
    return records[0].storage_id, *(int(value.value) if value is not None else 0 for value in figures)


def make_index_graph_sensor(minimum_interval_seconds: int) -> dg.SensorDefinition:
    @dg.sensor(name="index_graph", jobs=[build_index_graph], minimum_interval_seconds=minimum_interval_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Launches `build_index_graph` once runs have left at least VISION_ASSETS_QDRANT_HNSW_"
               "THRESHOLD points of the embedded index outside its HNSW graph, or sealed shards to merge, so that no "
               "pipeline run or search waits for a build.")
    def index_graph(context: dg.SensorEvaluationContext, qdrant: QdrantResource):
        if qdrant.url:
            return dg.SkipReason(f"Qdrant at {qdrant.url} builds its own graphs")
        cursor = IndexGraphCursor.parse(context.cursor)
        newest = upkeep_after(context.instance, cursor.seen)
        if newest is None:
            return dg.SkipReason("no index writes since the last look")
        storage_id, unindexed, unmerged = newest
        if unindexed < qdrant.hnsw_threshold and not unmerged:
            return dg.SensorResult(skip_reason=f"{unindexed:,} points outside the graph (a build starts at "
                                   f"{qdrant.hnsw_threshold:,})", cursor=IndexGraphCursor(seen=storage_id).dump())
        if context.instance.get_run_records(dg.RunsFilter(job_name=build_index_graph.name, statuses=IN_FLIGHT),
                                            limit=1):
            return dg.SkipReason("a build is in flight; looking again after it")
        return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"index-graph-{storage_id}")],
                               cursor=IndexGraphCursor(seen=storage_id).dump())

    return index_graph
