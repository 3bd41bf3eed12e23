"""Is each uploaded object a usable image? (ERROR; see per_image.py for how results reach the UI.)"""

import dagster as dg

from ..vision.records import SourceImageRecord
from ..vision.results_store import SOURCE_RECORD
from .per_image import ImageOutcome, PerImageCheck

SOURCE_IMAGES = dg.AssetKey("source_images")


def validation_outcome(record: SourceImageRecord) -> ImageOutcome:
    metadata = {"source_uri": record.source_uri}
    if record.rejection:
        metadata |= {"reason": record.rejection.code.value, "message": record.rejection.message}
        description = record.rejection.message
    else:
        metadata |= {"width": record.facts.width, "height": record.facts.height, "format": record.facts.format}
        description = "valid image"
    return ImageOutcome(record.partition_key, record.is_valid, description, metadata)


image_validity = PerImageCheck(
    asset=SOURCE_IMAGES,
    name="image_valid",
    batch_name="images_valid",
    severity=dg.AssetCheckSeverity.ERROR,
    description="The object decoded as an image and passed the limits; if not, the reason. Failing images go no "
    "further.",
    record_file=SOURCE_RECORD,
    record_type=SourceImageRecord,
    outcome=validation_outcome,
)
image_valid = image_validity.definition()
