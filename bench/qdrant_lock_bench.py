"""How long embedded Qdrant is held, by a search and by a run's index step, as the index grows: the numbers behind
"take turns on a lock" (see README, "Operating"). `--engine local` measures qdrant-client's local mode (the embedded
default before Qdrant Edge), which reads every point into memory whenever a client opens.

    uv run python bench/qdrant_lock_bench.py [--points 1000,10000,20000] [--engine edge|local]
"""

import argparse
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient, models

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

from vision_assets.vision.index.connection import open_embedded
from vision_assets.vision.index.vector_index import ImagePoints, VectorIndex

DIMENSION = 512
CROPS_PER_IMAGE = 4


def payload(i: int) -> dict:
    return {"image_id": f"photo_{i:06d}.jpg", "entity": "dog", "label": "golden retriever", "labels": ["a", "b"],
            "confidence": 0.8, "needs_review": False, "source_uri": f"s3://bucket/photo_{i:06d}.jpg",
            "embedding_model": "ViT-B-32/laion2b_s34b_b79k", "top_k": [{"name": "golden retriever", "confidence": 0.8}]}


def unit(rng, n: int) -> np.ndarray:
    vectors = rng.standard_normal((n, DIMENSION)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def open_index(path: str, engine: str):
    if engine == "local":
        return QdrantClient(path=path)
    return open_embedded(path, 60)


def fill(path: str, images: int, rng, engine: str) -> None:
    client = open_index(path, engine)
    index = VectorIndex(client)
    index.ensure_collections(DIMENSION, "ViT-B-32/laion2b_s34b_b79k")
    for start in range(0, images, 1000):
        count = min(1000, images - start)
        client.upsert("images", points=[models.PointStruct(id=str(uuid.uuid4()), vector=v.tolist(), payload=payload(start + i))
                                        for i, v in enumerate(unit(rng, count))], wait=True)
        client.upsert("crops", points=[models.PointStruct(id=str(uuid.uuid4()), vector=v.tolist(), payload=payload(start + i // CROPS_PER_IMAGE))
                                       for i, v in enumerate(unit(rng, count * CROPS_PER_IMAGE))], wait=True)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", default="1000,10000,20000", help="images in the index (each with 4 crops)")
    parser.add_argument("--batch", type=int, default=256, help="images one run indexes")
    parser.add_argument("--engine", choices=["edge", "local"], default="edge")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"embedded Qdrant ({args.engine}), {DIMENSION}-d, {CROPS_PER_IMAGE} crops per image; hold times in seconds")
    print(f"  {'images':>7}  {'open (load)':>11}  {'search':>7}  {'a search holds':>14}  {'a run of ' + str(args.batch) + ' holds':>18}")
    for images in map(int, args.points.split(",")):
        path = tempfile.mkdtemp(prefix="qdrant-lock-bench-")
        fill(path, images, rng, args.engine)
        started = time.perf_counter()
        client = open_index(path, args.engine)
        opened = time.perf_counter()
        client.query_points("images", query=unit(rng, 1)[0].tolist(), limit=10,
                            query_filter=models.Filter(must=[models.FieldCondition(key="entity", match=models.MatchValue(value="dog"))]))
        searched = time.perf_counter()
        client.close()
        search_hold = time.perf_counter() - started

        run_started = time.perf_counter()
        index = VectorIndex(open_index(path, args.engine))
        batch = [ImagePoints(partition_key=f"new_{i}.jpg", image_vector=unit(rng, 1)[0], image_payload=payload(i),
                             crop_vectors=unit(rng, CROPS_PER_IMAGE), crop_payloads=[payload(i)] * CROPS_PER_IMAGE,
                             crop_indexes=list(range(CROPS_PER_IMAGE))) for i in range(args.batch)]
        index.upsert(batch)
        index.consistency_problems(batch)
        index.client.close()
        run_hold = time.perf_counter() - run_started
        print(f"  {images:>7}  {opened - started:>11.2f}  {searched - opened:>7.3f}  {search_hold:>14.2f}  "
              f"{run_hold:>18.2f}")


if __name__ == "__main__":
    main()
