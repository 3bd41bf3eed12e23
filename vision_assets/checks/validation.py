"""Is each uploaded object a usable image? (ERROR; a rejected image goes no further. See per_image.py for how the
results reach the UI.)"""

import dagster as dg

from ..vision.records import SourceImageRecord
from .per_image import ImageOutcome, PerImageCheck

SOURCE_IMAGES = dg.AssetKey("source_images")


def validation_outcome(record: SourceImageRecord, preview_markdown: str | None = None) -> ImageOutcome:
    metadata: dict = {"source_uri": record.source_uri}
    if record.rejection:
        metadata |= {"reason": record.rejection.code.value, "message": record.rejection.message}
        if preview_markdown:  # what still decodes of the file, so a reviewer sees what was uploaded
            metadata["preview"] = dg.MetadataValue.md(preview_markdown)
        description = f"rejected ({record.rejection.code.value}): {record.rejection.message}"
    else:
        facts = record.facts
        metadata |= {"width": facts.width, "height": facts.height, "format": facts.format}
        description = f"valid {facts.format}, {facts.width}x{facts.height}"
    return ImageOutcome(record.partition_key, record.is_valid, description, metadata)


image_validity = PerImageCheck(
    asset=SOURCE_IMAGES,
    name="image_valid",
    batch_name="images_valid",
    severity=dg.AssetCheckSeverity.ERROR,
    description="The object decoded as an image and passed the limits; if not, the reason. Rejected images go no "
    "further.",
    not_passed="rejected",
)
