"""The Qdrant index with a real client, embedded in a temporary folder."""

import numpy as np
import pytest
from qdrant_client import models

from tests.conftest import embedded_client
from vision_assets.vision.index.vector_index import (
    ImagePoints,
    IndexMismatch,
    VectorIndex,
    crop_point_id,
    image_point_id,
)

DIM = 8


@pytest.fixture
def index(tmp_path):
    client = embedded_client(str(tmp_path / "qdrant"))
    yield VectorIndex(client)
    client.close()


def unit(seed, n=None):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, DIM) if n is not None else DIM).astype(np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def points(key, crops, seed=0, earlier=()):
    return ImagePoints(
        partition_key=key,
        image_vector=unit(seed),
        image_payload={"image_id": key, "labels": ["golden retriever"]},
        crop_vectors=unit(seed + 1, len(crops)),
        crop_payloads=[{"image_id": key, "entity": "dog", "label": "golden retriever", "needs_review": False} for _ in crops],
        crop_indexes=list(crops),
        earlier_crop_ids=[crop_point_id(key, i) for i in earlier],
    )


def test_ids_are_deterministic_and_distinct():
    assert image_point_id("a.jpg") == image_point_id("a.jpg") != image_point_id("b.jpg")
    assert crop_point_id("a.jpg", 0) != crop_point_id("a.jpg", 1) != image_point_id("a.jpg")


def test_upsert_twice_overwrites_not_duplicates(index):
    index.ensure_collections(DIM, "clip-x")
    index.upsert([points("a.jpg", [0, 1, 2]), points("b.jpg", [0])])
    index.upsert([points("a.jpg", [0, 1, 2], seed=5)])
    assert index.client.count(index.images).count == 2
    assert index.client.count(index.crops).count == 4
    assert index.consistency_problems([points("a.jpg", [0, 1, 2]), points("b.jpg", [0])]) == {"a.jpg": [], "b.jpg": []}


def test_fewer_crops_on_a_rerun_leave_no_strays(index):
    index.ensure_collections(DIM, "clip-x")
    index.upsert([points("a.jpg", [0, 1, 2]), points("b.jpg", [0, 1])])
    # what the earlier run recorded: a's three crops and b's two; one delete for both, b keeps its crops
    rerun = [points("a.jpg", [1], earlier=[0, 1, 2]), points("b.jpg", [0, 1], earlier=[0, 1])]
    index.upsert(rerun)
    assert index.client.count(index.crops).count == 3
    assert index.consistency_problems(rerun) == {"a.jpg": [], "b.jpg": []}


def test_consistency_reports_missing_and_stray_points(index):
    index.ensure_collections(DIM, "clip-x")
    index.upsert([points("a.jpg", [0, 1])])
    index.client.delete(index.crops, points_selector=models.PointIdsList(points=[crop_point_id("a.jpg", 0)]))
    index.client.upsert(index.crops, points=[models.PointStruct(id=crop_point_id("a.jpg", 9), vector=unit(3).tolist(),
                                                                payload={"image_id": "a.jpg"})])
    # crop 9: a point an earlier run left (its record, or its detections, name index 9)
    problems = index.consistency_problems([points("a.jpg", [0, 1], earlier=[9]), points("gone.jpg", [])])["a.jpg"]
    assert index.consistency_problems([points("gone.jpg", [])])["gone.jpg"] == [
        "images collection has 0 point(s) for this image, expected 1"]
    assert "1 crop point(s) missing" in problems and "1 stray crop point(s) carry this image id" in problems


def test_filters_on_payload(index):
    index.ensure_collections(DIM, "clip-x")
    index.upsert([points("a.jpg", [0, 1])])
    hits = index.client.query_points(index.crops, query=unit(1).tolist(), limit=10, query_filter=models.Filter(
        must=[models.FieldCondition(key="label", match=models.MatchValue(value="golden retriever"))])).points
    assert len(hits) == 2


def test_lookups_are_by_id_not_by_scanning(index):
    """Embedded Qdrant answers a filter by scanning every point; the stage's calls name point ids instead, so their
    cost follows the batch, not the catalogue."""
    index.ensure_collections(DIM, "clip-x")
    calls = []
    for name in ("scroll", "count", "query_points"):
        setattr(index.client, name, lambda *a, _name=name, **k: calls.append(_name))
    original_delete = index.client.delete
    index.client.delete = lambda collection, points_selector, **k: (
        calls.append(type(points_selector).__name__), original_delete(collection, points_selector, **k))
    batch = [points("a.jpg", [0], earlier=[0, 1]), points("b.jpg", [0, 1])]
    index.upsert(batch)
    index.consistency_problems(batch)
    index.delete_points(["c.jpg"], [crop_point_id("c.jpg", 0)])
    assert calls == ["PointIdsList", "PointIdsList", "PointIdsList"]


def test_delete_points(index):
    index.ensure_collections(DIM, "clip-x")
    index.upsert([points("a.jpg", [0, 1]), points("b.jpg", [0])])
    index.delete_points(["a.jpg"], [crop_point_id("a.jpg", 0), crop_point_id("a.jpg", 1)])
    assert index.client.count(index.images).count == 1 and index.client.count(index.crops).count == 1


def test_delete_image(index):
    index.ensure_collections(DIM, "clip-x")
    index.upsert([points("a.jpg", [0, 1]), points("b.jpg", [0])])
    index.delete_image("a.jpg")
    assert index.client.count(index.images).count == 1 and index.client.count(index.crops).count == 1


def test_never_mixes_vector_spaces(index):
    index.ensure_collections(DIM, "clip-x")
    with pytest.raises(IndexMismatch, match="new VISION_ASSETS_QDRANT_COLLECTION_PREFIX"):
        index.ensure_collections(DIM * 2, "clip-y")
    with pytest.raises(IndexMismatch):
        index.ensure_collections(DIM, "clip-y")
