"""The job the upload sensor launches: the image pipeline for a batch of partitions, in one process so models
load once per run."""

import dagster as dg

from .checks.validation import SOURCE_IMAGES

CATALOG = dg.AssetKey("image_catalog")

process_images = dg.define_asset_job(
    "process_images",
    # Every stage with its checks (the per-image and per-batch checks are part of their assets: see
    # checks/per_image.py), except the whole-bucket table, which is refreshed on its own, not by every batch.
    selection=dg.AssetSelection.assets(SOURCE_IMAGES).downstream() - dg.AssetSelection.assets(CATALOG),
    executor_def=dg.in_process_executor,
    description="Everything that happens to a batch of uploaded images. Launched by `upload_sensor`, one run per "
    "batch of adjacent partitions.",
)
