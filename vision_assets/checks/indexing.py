"""Does Qdrant hold exactly this image's points? (ERROR)"""

import dagster as dg

from ..resources import ImageStore
from ..vision.records import IndexRecord
from ..vision.results_store import INDEX
from .per_image import ImageOutcome, PerImageCheck


def index_outcome(record: IndexRecord) -> ImageOutcome:
    return ImageOutcome(
        record.partition_key,
        passed=not record.problems,
        description="; ".join(record.problems) or f"image point and {len(record.crop_points)} crop point(s), no strays",
        metadata={"image_point": record.image_point, "crop_points": len(record.crop_points)},
    )


def _stored(image_store: ImageStore, partition_key: str) -> ImageOutcome | None:
    record = image_store.results.read(partition_key, INDEX, IndexRecord)
    return index_outcome(record) if record else None


index_consistency = PerImageCheck(
    asset=dg.AssetKey("qdrant_index"),
    name="indexed",
    batch_name="index_consistent",
    severity=dg.AssetCheckSeverity.ERROR,
    description="Every image and crop of the batch has its point in Qdrant and no other point carries its image id.",
    stored_outcome=_stored,
)
indexed = index_consistency.definition()
