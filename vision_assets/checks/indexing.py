"""Does Qdrant hold exactly this image's points? (ERROR)"""

import dagster as dg

from ..vision.records import IndexRecord
from .per_image import ImageOutcome, PerImageCheck

INDEX_KEY = dg.AssetKey("qdrant_index")


def index_outcome(record: IndexRecord) -> ImageOutcome:
    return ImageOutcome(
        record.partition_key,
        passed=not record.problems,
        description="; ".join(record.problems) or f"image point and {len(record.crop_points)} crop point(s), no strays",
        metadata={"image_point": record.image_point, "crop_points": len(record.crop_points)},
    )


index_consistency = PerImageCheck(
    asset=INDEX_KEY,
    name="indexed",
    batch_name="index_consistent",
    severity=dg.AssetCheckSeverity.ERROR,
    description="Every image and crop of the batch has its point in Qdrant and no other point carries its image id.",
    not_passed="failed",
)
