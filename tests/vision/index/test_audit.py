"""Which images lost their points, and which runs put them back."""

import numpy as np

from tests.conftest import embedded_client
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


def test_a_runs_audit_reads_a_bounded_sample_of_the_catalogue(tmp_path):
    """`index_complete` in a run looks about RUN_AUDIT_SAMPLE images up, read from a few randomly chosen batches'
    ledgers, whatever the catalogue's size; the sensor's full audit reads every batch's ledger."""
    from vision_assets.vision.batches import BatchIndexed
    from vision_assets.vision.index.ledger import index_ledger, sampled_indexed
    from vision_assets.vision.storage.object_store import FolderObjectStore
    from vision_assets.vision.storage.results_store import ResultsStore

    class Counting(FolderObjectStore):
        gets = 0

        def get(self, key, max_bytes=None):
            Counting.gets += 1
            return super().get(key, max_bytes)

    results = ResultsStore(Counting(tmp_path), "results/")
    batches = [f"b{i:03d}" for i in range(60)]
    for batch in batches[:50]:  # 50 batches indexed 10 images each, 10 never
        results.write_batch_indexed(BatchIndexed(batch=batch, indexed=[f"{batch}-{j}.jpg" for j in range(10)]))
    ledger = index_ledger(results, batches)
    assert len(ledger.indexed) == 500 and ledger.batches_of(["b007-3.jpg", "b049-0.jpg"]) == ["b007", "b049"]
    everything, population = sampled_indexed(results, batches, exclude={"b000"}, seed="run-1", size=1000)
    assert (len(everything), population) == (490, None)
    Counting.gets = 0
    sample, population = sampled_indexed(results, batches, exclude={"b000"}, seed="run-1", size=35)
    assert population == 59 and len(sample) == 35 and not {image for image in sample if image.startswith("b000")}
    assert Counting.gets <= 10  # a few batches read, not the catalogue
    assert sampled_indexed(results, batches, exclude={"b000"}, seed="run-1", size=35)[0] == sample  # seeded by the run
