"""What every stage shares: how it fails (a store or Qdrant outage is waited out, anything else is final), which
images of the batch it takes (a rejected image goes no further, and each skipped partition says why), and how
it reads them (a chunk at a time)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import dagster as dg
from dagster._core.execution.context.metadata_logging import AssetMetadataHandle, OutputMetadataAccumulator
from dagster._core.storage.tags import RETRY_ON_ASSET_OR_OP_FAILURE_TAG
from PIL import Image

from ..resources import ImageStore, StagePolicy
from ..vision.index.connection import IndexUnavailable
from ..vision.storage.object_store import StoreUnavailable
from ..vision.records import SourceImageRecord

TRANSIENT = (StoreUnavailable, IndexUnavailable)


def transient_faults_retried(stage: Callable[..., Iterator]) -> Callable[..., Iterator]:
    """Wrap a stage (a generator taking `context` and a `stage_policy` resource).

    - The store or Qdrant unreachable: the step is retried after a wait that doubles each time. Past the last
      retry the step fails, and Dagster's run retries (the instance's `run_retries`) re-execute the run from it.
    - Anything else (a bug, a damaged index, a mismatched collection) is not healed by waiting: the run is tagged
      so that Dagster's run retries leave it failed, with its error, for a person.
    """

    @functools.wraps(stage)
    def guarded(context: dg.AssetExecutionContext, *args, **kwargs) -> Iterator:
        policy: StagePolicy = kwargs["stage_policy"]
        try:
            yield from stage(context, *args, **kwargs)
        except TRANSIENT as error:
            wait = policy.wait_before_retry(context.retry_number)
            if context.retry_number < policy.retries:
                context.log.warning(f"{error}; retry {context.retry_number + 1} of {policy.retries} in {wait:.0f}s")
            raise dg.RetryRequested(max_retries=policy.retries, seconds_to_wait=wait) from error
        except Exception:
            context.instance.add_run_tags(context.run.run_id, {RETRY_ON_ASSET_OR_OP_FAILURE_TAG: "false"})
            raise

    return guarded


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


class ImageMetadata:
    """Each image's metadata for the stage's materializations, handed to Dagster once, with the MaterializeResult.

    `context.add_asset_metadata(..., partition_key=)` lists every registered partition on each call to check the key
    (a query that grows with the catalogue: 46 ms per image with none, 200 ms with 10,000) and copies all metadata
    added so far (quadratic in the batch). Here the keys are checked once against the run's, and the whole set goes
    into the step's metadata in one step."""

    def __init__(self, context: dg.AssetExecutionContext):
        self._context = context
        self._by_key: dict[str, dict] = {}

    def add(self, partition_key: str, metadata: dict) -> None:
        self._by_key.setdefault(partition_key, {}).update(metadata)

    def skipped(self, skipped: dict[str, str]) -> None:
        for key, why in skipped.items():
            self.add(key, {"status": "skipped", "skipped_because": why})

    def materialize(self) -> dg.MaterializeResult:
        """The stage's MaterializeResult, each image's materialization carrying its metadata."""
        not_targeted = set(self._by_key) - set(self._context.partition_keys)
        if not_targeted:
            raise dg.DagsterInvariantViolationError(f"metadata for partitions this run does not target: "
                                                    f"{sorted(not_targeted)[:5]}")
        step = self._context.op_execution_context._step_execution_context  # noqa: SLF001 - see the docstring
        accumulated = step._metadata_accumulator  # noqa: SLF001
        asset = self._context.assets_def.key
        handles = {AssetMetadataHandle(asset_key=asset, partition_key=key): metadata
                   for key, metadata in self._by_key.items()}
        merged = dict(accumulated.per_output_metadata)
        for handle, metadata in handles.items():
            merged[handle] = {**merged.get(handle, {}), **metadata}
        step._metadata_accumulator = OutputMetadataAccumulator(per_output_metadata=merged)  # noqa: SLF001
        return dg.MaterializeResult()


def load_images(image_store: ImageStore, keys: list[str]) -> dict[str, Image.Image]:
    """Decoded pixels of a chunk of the batch (never the whole batch: memory follows the chunk size)."""
    results = image_store.results
    return {key: results.read_normalized(key).convert("RGB") for key in keys}


def stage_asset(**kwargs) -> dict:
    """The settings every per-image stage shares: batched over the `images` partitions, one run per range."""
    from ..partitions import images

    return {"partitions_def": images, "backfill_policy": dg.BackfillPolicy.single_run(), "group_name": "models"} | kwargs
