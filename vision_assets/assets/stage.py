"""What every stage after `source_images` does first: take the batch's images that passed validation (a rejected
image goes no further), and say on each skipped partition why."""

from __future__ import annotations

import dagster as dg
from PIL import Image

from ..resources import ImageStore
from ..vision.records import SourceImageRecord


def valid_sources(image_store: ImageStore, keys: list[str]) -> tuple[dict[str, SourceImageRecord], dict[str, str]]:
    """(partition -> source record for valid images, partition -> why it is skipped)."""
    valid, skipped = {}, {}
    for key in keys:
        record = image_store.results.read_source_record(key)
        if record is None:
            skipped[key] = "not ingested: materialize source_images first"
        elif not record.is_valid:
            skipped[key] = f"rejected at validation ({record.rejection.code.value}): {record.rejection.message}"
        else:
            valid[key] = record
    return valid, skipped


def note_skipped(context: dg.AssetExecutionContext, skipped: dict[str, str]) -> None:
    for key, why in skipped.items():
        context.add_asset_metadata({"status": "skipped", "skipped_because": why}, partition_key=key)


def load_images(image_store: ImageStore, keys: list[str]) -> dict[str, Image.Image]:
    results = image_store.results
    return {key: results.read_normalized(key).convert("RGB") for key in keys}


def stage_asset(**kwargs) -> dict:
    """The settings every per-image stage shares: batched over the `images` partitions, one run per range."""
    from ..partitions import images

    return {"partitions_def": images, "backfill_policy": dg.BackfillPolicy.single_run(), "group_name": "models"} | kwargs
