"""Which images lost their points, and which runs put them back."""

import numpy as np
from qdrant_client import QdrantClient

from vision_assets.vision.index.audit import audit_index, repair_ranges
from vision_assets.vision.index.vector_index import ImagePoints, VectorIndex


def test_repair_ranges_cover_the_missing_and_only_harmless_images_between():
    order = ["a", "b", "c", "d", "e", "f", "g"]
    # b, d missing; c rejected (harmless) between them; e present: a barrier; g missing again
    assert repair_ranges(order, missing={"b", "d", "g"}, harmless={"c", "f"}) == [("b", "d"), ("g", "g")]
    assert repair_ranges(order, missing={"b", "g"}, harmless={"c", "d", "e", "f"}) == [("b", "g")]
    assert repair_ranges(order, missing=set(), harmless={"a"}) == []
    assert repair_ranges(order, missing={"a", "b"}, harmless=set()) == [("a", "b")]


def test_audit_finds_images_without_a_point(tmp_path):
    index = VectorIndex(QdrantClient(path=str(tmp_path / "q")))
    try:
        assert audit_index(index, ["x.jpg"]).missing == ["x.jpg"]  # no collection at all
        index.ensure_collections(4, "m")
        vector = np.array([1, 0, 0, 0], np.float32)
        index.upsert([ImagePoints("kept.jpg", vector, {"image_id": "kept.jpg"}, np.zeros((0, 4), np.float32))])
        audit = audit_index(index, ["kept.jpg", "lost.jpg"])
        assert (audit.expected, audit.missing, audit.complete) == (2, ["lost.jpg"], False)
        assert "1 of 2 images the pipeline indexed have no point" in audit.describe("embedded at q")
        assert audit_index(index, ["kept.jpg"]).complete
    finally:
        index.client.close()
