"""The job the upload sensor launches: the image pipeline for a batch of partitions, in one process so models
load once per run."""

import dagster as dg

from .assets.ingest import source_images
from .checks.validation import image_valid

# The per-image check is reported by source_images itself (see checks/validation.py); planning it as a step in a
# batched run would only add a result attributed to no partition.
process_images = dg.define_asset_job(
    "process_images",
    selection=dg.AssetSelection.assets(source_images).downstream() - dg.AssetSelection.checks(image_valid),
    executor_def=dg.in_process_executor,
    description="Everything that happens to a batch of uploaded images. Launched by `upload_sensor`, one run per "
    "batch of adjacent partitions.",
)
