"""`build_index_graph_op`: the embedded index's HNSW graph, built outside pipeline runs.

Qdrant Edge builds a graph only when asked. Builds used to happen in whichever run closed the index past the
threshold, holding the index (and every other run and search) for as long as the build took, which grew with the
catalogue (a full rebuild each time: 24 minutes at a million points on two cores). Now a run only writes; the
`index_graph` sensor launches this op once runs report enough points outside the graph, and each build makes a
segment of just those points (edge.py), so the index is held for as long as the new points take (about 5 s per
10,000 on two cores), plus, past 24 segments, a merge of the smallest (17-25 s in all at a million points). In the
`qdrant` pool, like every other writer."""

import time

import dagster as dg

from ..resources import QdrantResource


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
