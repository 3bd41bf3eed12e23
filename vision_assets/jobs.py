"""Every job. The pipeline's run in one process, so models (where any) load once per run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import dagster as dg

from .assets.deletion import delete_images_op
from .assets.index_graph import build_index_graph_op, compact_index_op
from .assets.qdrant_index import REINDEX_TAG
from .keys import IMAGE_CATALOG, QDRANT_INDEX, REVIEW_ACCURACY, REVIEW_DECISIONS, REVIEW_QUEUE, SOURCE_IMAGES

if TYPE_CHECKING:
    from .dagster_internals import PipelineJob

PROCESS_IMAGES = "process_images"


def pipeline_job(run_tags: Mapping[str, object] | None = None) -> PipelineJob:
    """`process_images`, with tags every run of it carries (on Kubernetes with models in the runs: the pod's GPU,
    `run_placement.py`). Built once, in `wiring.py`, and handed to the sensors that launch it."""
    return dg.define_asset_job(
        PROCESS_IMAGES,
    # Every stage with its checks, except the unpartitioned assets: the whole-bucket table, the review queue and
    # the review loop have jobs of their own.
        selection=dg.AssetSelection.assets(SOURCE_IMAGES).downstream()
        - dg.AssetSelection.assets(IMAGE_CATALOG, REVIEW_DECISIONS, REVIEW_QUEUE, REVIEW_ACCURACY),
        executor_def=dg.in_process_executor,
        tags=dict(run_tags or {}),
        description="Everything that happens to an upload batch. Launched by `upload_sensor`, one run per batch; a "
        "backfill runs any range of batches in one run. To re-run a few images: `vision-assets reprocess KEY ...`, or "
        "launch it on their batches with `resources: {image_selection: {config: {images: [...]}}}`.",
    )

reindex = dg.define_asset_job(
    "reindex",
    selection=dg.AssetSelection.assets(QDRANT_INDEX),
    executor_def=dg.in_process_executor,
    tags={REINDEX_TAG: "true"},
    description="Writes the Qdrant points of a range of batches again from their stored results, without a model, "
    "and sends no callbacks. Launched by `index_repair` when the index lost points, or by `vision-assets reindex`.",
)

apply_reviews = dg.define_asset_job(
    "apply_reviews",
    selection=dg.AssetSelection.assets(REVIEW_DECISIONS),
    executor_def=dg.in_process_executor,
    description="Reviewers' verdicts applied to the index and to their batches' label checks, in bulk. Launched by "
    "`review_sensor`, one run per tick that read verdicts.",
)

measure_accuracy = dg.define_asset_job(
    "measure_accuracy",
    selection=dg.AssetSelection.assets(REVIEW_ACCURACY),
    description="The committee's precision against every verdict so far, with threshold suggestions. Launched by "
    "`review_sensor` once the reviews it applied are in.",
)

refresh_review_queue = dg.define_asset_job(
    "refresh_review_queue",
    selection=dg.AssetSelection.assets(REVIEW_QUEUE),
    description="What needs a person now. Launched by `review_sensor` after runs that change it.",
)

refresh_catalog = dg.define_asset_job(
    "refresh_catalog", selection=dg.AssetSelection.assets(IMAGE_CATALOG),
    description="Rebuild the catalogue (incremental: only changed records are read).",
)


@dg.job(description="Delete images: launch with `ops: {delete_images_op: {config: {image_ids: [...]}}}` or "
        "`vision-assets delete KEY ...`. Deleting an object from the bucket does the same by itself.")
def delete_images():
    delete_images_op()


@dg.job(description="Builds the embedded index's HNSW graph for the points runs left outside it, holding the index "
        "only for those, then merges sealed shards on a copy. Launched by the `index_graph` sensor.")
def build_index_graph():
    compact_index_op(build_index_graph_op())
