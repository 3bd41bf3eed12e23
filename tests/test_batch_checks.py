"""A batch check's result: what it says about the images inside a batch, bounded whatever the batch."""

import dagster as dg

from vision_assets.assets.batch_checks import MAX_ROWS, BatchCheck, ImageOutcome


def test_a_batch_result_stays_bounded_whatever_the_batch():
    """A batch check's result lists at most 200 images and 12 pictures: a few hundred KB per event even for a
    batch of thousands, all of them failing."""
    check = BatchCheck(asset=dg.AssetKey("a"), name="ok", severity=dg.AssetCheckSeverity.WARN, description="d",
                       not_passed="failed")
    picture = "![x](data:image/jpeg;base64," + "A" * 20_000 + ")"
    outcomes = [ImageOutcome(f"img-{i:05d}.jpg", False, "why " * 20, picture=picture, facts={"crops": 2})
                for i in range(5000)]
    evaluation = check.evaluation("b", outcomes, {"x.jpg": "superseded: re-uploaded in batch c"}, None)
    table = evaluation.metadata["failed"].value
    assert table.count("\n| `img-") == MAX_ROWS and "4800 more" in table
    assert evaluation.metadata["pictures"].value.count("![x]") == 12
    assert evaluation.metadata["failed_count"].value == 5000 and evaluation.metadata["total_crops"].value == 10_000
    assert evaluation.metadata["skipped"].value == {"superseded": 1}
    assert len(table) + len(evaluation.metadata["pictures"].value) < 400_000
