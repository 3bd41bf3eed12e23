"""Which images lost their points, and which runs put them back."""

import numpy as np

from vision_assets.vision.index.audit import audit_index, repair_ranges
from vision_assets.vision.index.vector_index import ImagePoints, VectorIndex
from tests.conftest import embedded_client


def test_repair_ranges_cover_the_missing_and_only_harmless_images_between():
    order = ["a", "b", "c", "d", "e", "f", "g"]
    # b, d missing; c rejected (harmless) between them; e present: a barrier; g missing again
    assert repair_ranges(order, missing={"b", "d", "g"}, harmless={"c", "f"}) == [("b", "d"), ("g", "g")]
    assert repair_ranges(order, missing={"b", "g"}, harmless={"c", "d", "e", "f"}) == [("b", "g")]
    assert repair_ranges(order, missing=set(), harmless={"a"}) == []
    assert repair_ranges(order, missing={"a", "b"}, harmless=set()) == [("a", "b")]


def test_audit_finds_images_without_a_point(tmp_path):
    index = VectorIndex(embedded_client(str(tmp_path / "q")))
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


def test_a_runs_audit_reads_a_bounded_sample_of_the_catalogue(instance):
    """`index_complete` in a run looks at most RUN_AUDIT_SAMPLE images up, whatever the catalogue's size."""
    import dagster as dg

    from vision_assets.checks.indexing import index_consistency, sampled_indexed
    from vision_assets.partitions import images

    keys = [f"{i:04d}.jpg" for i in range(60)]
    instance.add_dynamic_partitions(images.name, keys)
    for key in keys[:50]:  # 50 indexed, 10 never
        instance.report_runless_asset_event(dg.AssetCheckEvaluation(
            asset_key=index_consistency.asset, check_name=index_consistency.name, passed=True, partition=key))
    everything, population = sampled_indexed(instance, exclude={"0000.jpg"}, seed="run-1", size=100)
    assert (sorted(everything), population) == (keys[1:50], None)
    sample, population = sampled_indexed(instance, exclude={"0000.jpg"}, seed="run-1", size=20)
    assert population == 59 and set(sample) <= set(keys[1:50]) and 10 <= len(sample) <= 20
    assert sampled_indexed(instance, exclude={"0000.jpg"}, seed="run-1", size=20)[0] == sample  # seeded by the run
