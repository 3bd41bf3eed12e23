"""The search service at catalogue size: N image points (random unit vectors with realistic payloads) in the
embedded index (Qdrant Edge, HNSW built as a run would build it), the service started as `serve` starts it (the
generalist loaded once, the index held open), then warm text queries over HTTP: p50/p95, unfiltered and filtered.
Baseline in the same run: `vision-assets search` as a command, which loads the model and opens the index per query.

The models are the tiny offline twins (no hub here): a query's text embedding costs less than the real ViT-B/32's
(on this machine's CPU that text tower adds about 10-30 ms), the index work is the same.

    uv run python bench/service_bench.py [--points 100000] [--queries 200]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import httpx
import numpy as np
from qdrant_client import models as qm

from tests.conftest import free_port, search_service, serving
from vision_assets.bootstrap import bootstrap
from vision_assets.resources import LocalImageStore
from vision_assets.service.app import create_app
from vision_assets.settings import Settings
from vision_assets.tools.offline_models import build_offline_models
from vision_assets.vision.chunking import chunked
from vision_assets.vision.index.connection import embedded_access
from vision_assets.vision.index.vector_index import image_point_id
from vision_assets.wiring import model_resources_from

bootstrap()

ENTITIES = ["dog", "cat", "person", "bird", "car", "boat"]
TEXTS = ["dogs running on a beach", "a cat on a sofa", "a red car", "birds over the sea", "people at a market",
         "a boat in a harbour", "snow on mountains", "a city at night"]


def fill(qdrant, dimension: int, model: str, points: int) -> float:
    """N image points; returns the seconds their HNSW graph took (as `build_index_graph` builds it)."""
    rng = np.random.default_rng(0)
    with qdrant.open() as index:
        index.ensure_collections(dimension, model)
        for chunk in chunked(range(points), 2000):
            vectors = rng.standard_normal((len(chunk), dimension)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            index.client.upsert(index.images, points=[qm.PointStruct(
                id=image_point_id(f"cam/{n:07d}.jpg"), vector=vector.tolist(), payload={
                    "image_id": f"cam/{n:07d}.jpg", "source_uri": f"s3://bench/cam/{n:07d}.jpg",
                    "batch": f"2026-12-06T00:00:00Z-{n // 256:04d}", "entity": [ENTITIES[n % 6]],
                    "labels": [ENTITIES[n % 6]], "needs_review": n % 7 == 0,
                    "scene_tags": ["beach"] if n % 3 == 0 else [], "embedding_model": model})
                for n, vector in zip(chunk, vectors, strict=True)])
        return sum(index.build_graph().values())


def timed(client: httpx.Client, path: str, params: dict, count: int) -> list[float]:
    took = []
    for n in range(count):
        started = time.perf_counter()
        answer = client.get(path, params=params | {"text": TEXTS[n % len(TEXTS)]})
        took.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
    return took


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="service-bench-"))
    build_offline_models(work / "models")
    os.environ.update(VISION_ASSETS_OFFLINE_MODELS=str(work / "models"), VISION_ASSETS_DATA_DIR=str(work / "data"))
    settings = Settings.from_env()
    models = model_resources_from(settings)
    embedder, qdrant = models["embedder"], models["qdrant"]
    started = time.perf_counter()
    close_seconds = fill(qdrant, embedder.embedder.dimension, embedder.identity, args.points)
    print(f"{args.points:,} points written in {time.perf_counter() - started:.1f} s (HNSW: "
          f"{close_seconds:.1f} s)", flush=True)

    env = os.environ | {"VISION_ASSETS_SERVICE_PORT": str(free_port())}  # the command must not find a service
    command = [sys.executable, "-m", "vision_assets.cli", "search", TEXTS[0], "--limit", "10"]
    baseline = []
    for _ in range(3):
        began = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        baseline.append(time.perf_counter() - began)

    began = time.perf_counter()
    embedder.embedder.embed_texts(["warm up"])
    store = LocalImageStore(root=str(work / "data" / "bucket"))
    with search_service(models, store.results) as catalogue, serving(create_app(catalogue)) as port, \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        cold = timed(client, "/api/search", {"limit": 10}, 1)[0]
        startup = time.perf_counter() - began
        timed(client, "/api/search", {"limit": 10}, 10)  # warm
        rows = {name: timed(client, "/api/search", params, args.queries) for name, params in {
            "unfiltered": {"limit": 10},
            "entity=dog": {"limit": 10, "entity": "dog"},
            "needs_review": {"limit": 10, "needs_review": "true"},
            "scene=beach, page 3": {"limit": 10, "scene": "beach", "offset": 20},
        }.items()}
        # A run arriving while the service holds the embedded index: how long until it has the folder.
        waits, reopened = [], []
        for _ in range(5):
            reopened += timed(client, "/api/search", {"limit": 10}, 1)  # the service opens and holds it again
            began_waiting = time.perf_counter()
            with embedded_access(str(qdrant.path), wait_seconds=60):
                waits.append(time.perf_counter() - began_waiting)

    command_p50 = statistics.median(baseline)
    print(f"\nsearch over {args.points:,} image points, {args.queries} warm text queries each, 2-core CPU, tiny CLIP")
    print(f"baseline: `vision-assets search` as a command {command_p50:.2f} s per query (median of 3)")
    print(f"service: started and first answer in {startup:.2f} s (first query {cold * 1000:.0f} ms)")
    print(f"a run waiting for the held embedded index got it in {max(waits) * 1000:.0f} ms at most (of 5); the "
          f"query after it opened the index again: {statistics.median(reopened[1:]) * 1000:.0f} ms (median of 4)")
    print(f"{'query':<22} {'p50 ms':>8} {'p95 ms':>8} {'x faster (p50)':>15}")
    for name, took in rows.items():
        p50, p95 = statistics.median(took), percentile(took, 0.95)
        print(f"{name:<22} {p50 * 1000:8.1f} {p95 * 1000:8.1f} {command_p50 / p50:15.0f}")


if __name__ == "__main__":
    main()
