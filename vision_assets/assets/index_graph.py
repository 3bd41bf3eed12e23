"""The embedded index's upkeep, outside pipeline runs: `build_index_graph_op` then `compact_index_op`.

Qdrant Edge builds a graph only when asked, holding the index (and, through the one-process lock, every run and
search) while it builds. Builds used to happen in whichever run closed the index past the threshold, for as long as
the whole catalogue took (24 minutes at a million points on two cores). Now a run only writes; the `index_graph`
sensor launches this job once runs report enough points outside the graph; the build op puts just those into the
live shard's graph (a segment of their own, 3-7 s per 10,000 points on two cores) and seals the live shard when
full, in the `qdrant` pool like every other writer; the compaction op then copies sealed shards and merges the
copies, holding the index only to record the merge and to swap the copy in (edge_shards.py), and outside the pool,
so runs go on while it copies and merges."""

import time

import dagster as dg

from ..resources import QdrantResource
from ..vision.index.connection import compact_embedded


@dg.op(description="Puts the embedded index's points that are not in an HNSW graph yet into one (a segment of their "
       "own), holding the index only for that. Launched by the `index_graph` sensor; a Qdrant server builds its "
       "own graphs, so there it does nothing.", pool="qdrant")
def build_index_graph_op(context: dg.OpExecutionContext, qdrant: QdrantResource) -> dg.Output[None]:
    if qdrant.url:
        context.log.info(f"Qdrant at {qdrant.url} builds its own graphs: nothing to do")
        return dg.Output(None, metadata={"built_points": 0})
    started = time.perf_counter()
    with qdrant.open(on_wait=context.log.info) as index:
        waiting = index.unindexed()
        built = index.build_graph(tell=context.log.info)
    held = time.perf_counter() - started
    context.log.info(f"held the index {held:.1f} s" if built else "every point is in a graph already")
    return dg.Output(None, metadata={"built_points": sum(waiting[name] for name in built),
                                     "build_seconds": round(sum(built.values()), 2), "held_seconds": round(held, 2)})


@dg.op(description="Merges the embedded index's sealed shards into one segment each, on a copy: the index is held "
       "only to record the merge and to swap the merged copy in, so runs and searches go on meanwhile. Outside the "
       "`qdrant` pool for that reason.", ins={"built": dg.In(dg.Nothing)})
def compact_index_op(context: dg.OpExecutionContext, qdrant: QdrantResource) -> dg.Output[None]:
    if qdrant.url:
        return dg.Output(None, metadata={"merged_shards": 0})
    merged = compact_embedded(qdrant.path, qdrant.lock_wait_seconds, tell=context.log.info)
    if not merged:
        context.log.info("no sealed shard needs merging")
    return dg.Output(None, metadata={
        "merged_shards": len(merged), "merged_points": sum(m.points for m in merged),
        "copy_seconds": round(sum(m.copy_seconds for m in merged), 2),
        "merge_seconds": round(sum(m.merge_seconds for m in merged), 2),
        "longest_hold_seconds": round(max((m.held_seconds for m in merged), default=0.0), 2)})
