"""The embedded index at catalogue scale: N generated crop points (unit vectors of the CLIP dimension, payloads shaped
like the pipeline's) written through the project's own index code (`VectorIndex` over Qdrant Edge), then: write
rate, HNSW build time (in `--build-every` steps, as `build_index_graph` builds: the longest step is the longest
a run or a search waits), the time a fresh process takes to open the folder and its memory, and search p50/p95 with
and without each filter the CLI offers. The baseline is qdrant-client's local mode (the embedded default before
Edge) on `--baseline` points, measured in the same invocation. The review views at 100,000 images are
bench/review_views_bench.py's. Not part of the test suite.

    uv run python bench/scale_bench.py [--points 1000000] [--baseline 20000] [--dim 512] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from vision_assets.vision.index.search import SearchFilters
from vision_assets.vision.index.vector_index import VectorIndex

ENTITIES = ["dog", "cat", "bird", "bear", "zebra", "horse", "sheep", "cow", "elephant", "giraffe"]
LABELS = [f"label {i}" for i in range(200)]
FILTERS = {
    "none": SearchFilters(),
    "entity": SearchFilters(entity="dog"),
    "label": SearchFilters(label="label 7"),
    "needs_review": SearchFilters(needs_review=True),
    "clip_disagrees": SearchFilters(clip_disagrees=True),
    "min_confidence": SearchFilters(min_confidence=0.9),
    "entity+confidence+review": SearchFilters(entity="cat", min_confidence=0.5, needs_review=False),
}
WRITE_BATCH = 1000


def crop_points(start: int, count: int, dim: int, rng: np.random.Generator) -> list:
    from qdrant_client import models

    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    points = []
    for offset, vector in enumerate(vectors):
        i = start + offset
        label = LABELS[int(rng.integers(len(LABELS)))]
        confidence = float(rng.random())
        points.append(models.PointStruct(id=str(uuid.UUID(int=i + 1)), vector=vector.tolist(), payload={
            "image_id": f"catalog/{i // 4:07d}.jpg", "source_uri": f"s3://bucket/uploads/catalog/{i // 4:07d}.jpg",
            "entity": ENTITIES[i % len(ENTITIES)], "label": label, "labels": [label], "label_confidence": confidence,
            "confidence": float(rng.random()), "box": [10, 20, 110, 220], "specialist": "dog_breeds",
            "top_k": [{"label": label, "confidence": confidence}, {"label": "other", "confidence": 1 - confidence}],
            "needs_review": confidence < 0.3, "clip_disagrees": i % 17 == 0, "review_reasons": [],
            "embedding_model": "open_clip:ViT-B-32", "detector_model": "yolov8n"}))
    return points


def fill(index: VectorIndex, points: int, dim: int, build_every: int = 0,
         after_build: Callable[[VectorIndex], VectorIndex] | None = None) -> tuple[float, list[float]]:
    """Write `points` crop points, building the graph every `build_every` points as `build_index_graph` does (0:
    never), then `after_build` (the job's compaction); seconds taken writing, and each build's seconds (each one a
    wait for a run or a search)."""
    rng = np.random.default_rng(0)
    index.ensure_collections(dim, "open_clip:ViT-B-32")
    written, builds = 0.0, []
    for start in range(0, points, WRITE_BATCH):
        started = time.perf_counter()
        index.client.upsert(index.crops, crop_points(start, min(WRITE_BATCH, points - start), dim, rng), wait=True)
        written += time.perf_counter() - started
        if build_every and (start + WRITE_BATCH) % build_every == 0:
            builds.append(sum(index.build_graph().values()))
            if after_build:
                index = after_build(index)
        if start and start % 100_000 == 0:
            print(f"    {start:,} points written ({written:.0f} s writing, {sum(builds):.0f} s in "
                  f"{len(builds)} builds, longest {max(builds, default=0):.1f} s)", flush=True)
    return written, builds


MEASURE = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from bench.scale_bench import FILTERS
from vision_assets.vision.index.vector_index import VectorIndex
kind, path, dim, queries = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def rss(kind="VmRSS"):  # RssAnon: the process's own memory; RssFile: mapped files' pages, the page cache's to drop
    return int(next(l for l in open("/proc/self/status") if l.startswith(kind + ":")).split()[1]) * 1024
from qdrant_client import QdrantClient
from vision_assets.vision.index.connection import open_embedded
before = rss()
started = time.perf_counter()
client = open_embedded(path, 60) if kind == "edge" else QdrantClient(path=path)
index = VectorIndex(client)
index.client.count(index.crops)
opened = time.perf_counter() - started
result = {"open_s": opened, "rss_open": rss() - before, "search": {}, "cold": {}}
rng = np.random.default_rng(1)
for when in ("cold", "search"):  # the first queries of the process (the page cache emptied first where allowed), then again
    for name, filters in FILTERS.items():
        times = []
        for _ in range(queries if when == "search" else min(queries, 20)):
            vector = rng.standard_normal(dim).astype(np.float32)
            vector /= np.linalg.norm(vector)
            t = time.perf_counter()
            index.client.query_points(index.crops, query=vector.tolist(), query_filter=filters.to_qdrant("crops"),
                                      limit=10, with_payload=True)
            times.append(time.perf_counter() - t)
        result[when][name] = [float(np.percentile(times, 50)), float(np.percentile(times, 95))]
result["rss_after"] = rss() - before
result["rss_anon_after"], result["rss_file_after"] = rss("RssAnon"), rss("RssFile")
client.close()
print(json.dumps(result))
"""


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only), so that a fresh process reads its index from disk."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def measure(kind: str, path: str, dim: int, queries: int, cold: bool = True) -> dict:
    """Open the folder in a fresh process (as a run or a search does), then search; what it cost. `cold`: the page
    cache emptied first (a machine just started), else as the previous process left it (the usual case)."""
    dropped = drop_page_cache() if cold else False
    done = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), kind, path, str(dim), str(queries)],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"page_cache_dropped": dropped}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=int, default=20_000, help="local-mode points (0: skip the baseline)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--extend", type=int, default=10_000, help="points added afterwards, then HNSW again")
    parser.add_argument("--build-every", type=int, default=10_000,
                        help="build the graph every N points written, as build_index_graph does at the default "
                             "threshold (0: once, after everything is written)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    rows = {}
    if args.baseline:
        from qdrant_client import QdrantClient

        print(f"baseline: qdrant-client local mode, {args.baseline:,} points", flush=True)
        client = QdrantClient(path=str(home / "local"))
        write, _ = fill(VectorIndex(client), args.baseline, args.dim)
        client.close()
        rows["local"] = {"points": args.baseline, "write_s": write, "hnsw_s": None,
                         **measure("local", str(home / "local"), args.dim, min(args.queries, 50))}

    from vision_assets.vision.index.connection import compact_embedded, open_embedded

    print(f"Qdrant Edge, {args.points:,} points", flush=True)
    edge_path = str(home / "edge")
    merges, current = [], []

    def compact_when_sealed(index: VectorIndex) -> VectorIndex:
        """What `compact_index_op` does after a build that sealed the live shard (here in turn, there beside runs)."""
        if index.client.get_collection(index.crops).shards_count - 1 == sum(m.swapped for m in merges):
            return index
        index.client.close()
        merges.extend(m for m in compact_embedded(edge_path, 60) if m.collection == index.crops)
        print(f"    merged a sealed shard of {merges[-1].points:,} points: copied in {merges[-1].copy_seconds:.1f} s and "
              f"merged in {merges[-1].merge_seconds:.1f} s outside the lock; the folder held "
              f"{merges[-1].held_seconds:.2f} s", flush=True)
        current[:] = [VectorIndex(open_embedded(edge_path, 60))]
        return current[0]

    current.append(VectorIndex(open_embedded(edge_path, 60)))
    write, builds = fill(current[0], args.points, args.dim, args.build_every,
                         compact_when_sealed if args.build_every else None)
    current[0].client.close()
    client = open_embedded(edge_path, 60)
    index = VectorIndex(client)
    builds.append(sum(index.build_graph().values()))  # whatever is left
    client.close()
    merges.extend(m for m in compact_embedded(edge_path, 60) if m.collection == index.crops)
    holds = [m.held_seconds for m in merges]
    rows["edge"] = {"points": args.points, "write_s": write, "hnsw_s": sum(builds), "builds": len(builds),
                    "longest_build_s": max(builds), "merges": len(merges),
                    "merge_s": sum(m.merge_seconds for m in merges), "longest_merge_s": max(
                        (m.merge_seconds for m in merges), default=0), "longest_hold_s": max(holds, default=0),
                    **measure("edge", edge_path, args.dim, args.queries)}
    rows["edge"]["warm_open_s"] = measure("edge", edge_path, args.dim, 20, cold=False)["open_s"]
    # what a run pays when its writes cross the threshold on a large index: the default threshold's worth of new
    # points, then the HNSW build that a run's close would do
    client = open_embedded(str(home / "edge"), 60)
    index = VectorIndex(client)
    rng = np.random.default_rng(2)
    for start in range(args.points, args.points + args.extend, WRITE_BATCH):
        index.client.upsert(index.crops, crop_points(start, min(WRITE_BATCH, args.points + args.extend - start),
                                                     args.dim, rng), wait=True)
    rows["edge"]["extend_s"] = sum(index.build_graph().values())
    info = client.get_collection(index.crops)
    rows["edge"]["segments"], rows["edge"]["shards"] = info.segments_count, info.shards_count
    client.close()
    disk = sum(f.stat().st_size for f in (home / "edge").rglob("*") if f.is_file())

    print(f"\nthe embedded index, {args.dim}-d crop points with the pipeline's payloads (2-core machine)")
    base = rows.get("local")
    for kind, row in rows.items():
        name = "qdrant-client local mode (before)" if kind == "local" else "Qdrant Edge"
        print(f"  {name}, {row['points']:,} points: written in {row['write_s']:.0f} s "
              f"({row['points'] / row['write_s']:,.0f} points/s)"
              + (f", HNSW built in {row['hnsw_s']:.0f} s in {row['builds']} builds, the longest (a run's or a "
                 f"search's longest wait) {row['longest_build_s']:.1f} s" if row["hnsw_s"] is not None else ""))
        if row.get("merges"):
            print(f"    {row['merges']} sealed shards merged on copies in {row['merge_s']:.0f} s (the longest "
                  f"{row['longest_merge_s']:.0f} s, outside the lock); the longest the folder was held for one: "
                  f"{row['longest_hold_s']:.2f} s")
        ratio = f" ({row['open_s'] / base['open_s']:.2f}x the baseline)" if base and kind != "local" else ""
        warm = f"; {row['warm_open_s']:.2f} s with the page cache as a previous process left it" \
            if "warm_open_s" in row else ""
        print(f"    a fresh process opens it in {row['open_s']:.2f} s{ratio}{warm}, +{row['rss_open'] / 2**20:,.0f} "
              f"MiB resident (+{row['rss_after'] / 2**20:,.0f} MiB after the searches: "
              f"{row['rss_anon_after'] / 2**20:,.0f} MiB the process's own, {row['rss_file_after'] / 2**20:,.0f} MiB "
              "pages of mapped files)")
        cold = "page cache emptied first" if row["page_cache_dropped"] else "page cache NOT emptied (not root)"
        for filter_name, (p50, p95) in row["search"].items():
            ratio = (f" ({p95 / base['search'][filter_name][1]:.2f}x the baseline's p95)" if base and kind != "local"
                     else "")
            cold_p50, cold_p95 = row["cold"][filter_name]
            print(f"    search, filter {filter_name:<26} warm p50 {p50 * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms{ratio}"
                  f"; cold ({cold}) p50 {cold_p50 * 1000:7.1f} ms   p95 {cold_p95 * 1000:7.1f} ms")
    edge = rows["edge"]
    print(f"  then {args.extend:,} more points and HNSW again (one build_index_graph at the threshold; runs and "
          f"searches wait for it): {edge['extend_s']:.1f} s; {edge['segments']} segment(s) in {edge['shards']} shard(s)")
    print(f"  Qdrant Edge folder on disk: {disk / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
