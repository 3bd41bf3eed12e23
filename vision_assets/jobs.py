"""The job the upload sensor launches: the image pipeline for a batch of partitions, in one process so models
load once per run."""

import dagster as dg

from .checks.confidence import labels_confident
from .checks.embedding import embedding_valid
from .checks.indexing import indexed
from .checks.validation import SOURCE_IMAGES, image_valid

CATALOG = dg.AssetKey("image_catalog")

# Per-image checks are logged by their assets, one result per partition (see checks/per_image.py); planning them as
# steps in a batched run would only add a result attributed to no partition.
PER_IMAGE_CHECKS = [image_valid, labels_confident, embedding_valid, indexed]

process_images = dg.define_asset_job(
    "process_images",
    selection=dg.AssetSelection.assets(SOURCE_IMAGES).downstream()
    - dg.AssetSelection.assets(CATALOG)  # the whole-bucket table is refreshed on its own, not by every batch
    - dg.AssetSelection.checks(*PER_IMAGE_CHECKS),
    executor_def=dg.in_process_executor,
    description="Everything that happens to a batch of uploaded images. Launched by `upload_sensor`, one run per "
    "batch of adjacent partitions.",
)
