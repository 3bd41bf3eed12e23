"""The jobs: the pipeline for a batch of partitions, and the index rebuilt from stored results. Both run in one
process so models (where any) load once per run."""

import dagster as dg

from .assets.index import REINDEX_TAG
from .checks.indexing import INDEX_KEY
from .checks.validation import SOURCE_IMAGES

CATALOG = dg.AssetKey("image_catalog")
REVIEW = dg.AssetKey("review_decisions")
ACCURACY = dg.AssetKey("review_accuracy")

process_images = dg.define_asset_job(
    "process_images",
    # Every stage with its checks (the per-image and per-batch checks are part of their assets: see
    # checks/per_image.py), except the whole-bucket table, which is refreshed on its own, not by every batch, and
    # the review loop, which people's verdicts drive.
    selection=dg.AssetSelection.assets(SOURCE_IMAGES).downstream() - dg.AssetSelection.assets(CATALOG, REVIEW, ACCURACY),
    executor_def=dg.in_process_executor,
    description="Everything that happens to a batch of uploaded images. Launched by `upload_sensor`, one run per "
    "batch of adjacent partitions.",
)

reindex = dg.define_asset_job(
    "reindex",
    selection=dg.AssetSelection.assets(INDEX_KEY),
    executor_def=dg.in_process_executor,
    tags={REINDEX_TAG: "true"},
    description="Writes the Qdrant points of a range of images again from their stored results, without a model, "
    "and sends no callbacks. Launched by `index_repair` when the index lost points, or by `vision-assets reindex`.",
)

apply_reviews = dg.define_asset_job(
    "apply_reviews",
    selection=dg.AssetSelection.assets(REVIEW),
    executor_def=dg.in_process_executor,
    description="A reviewer's verdict on an image applied to its index points and label checks. Launched by "
    "`review_sensor`, one run per reviewed image.",
)

measure_accuracy = dg.define_asset_job(
    "measure_accuracy",
    selection=dg.AssetSelection.assets(ACCURACY),
    description="The committee's precision against every verdict so far, with threshold suggestions. Launched by "
    "`review_sensor` once the reviews it applied are in.",
)
