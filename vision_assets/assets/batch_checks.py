"""One question asked of every image of a batch, answered once per batch: a check partitioned like its asset, whose
result for a batch counts the images that passed, did not pass, and were skipped, with a bounded table of the ones
that did not pass (why, and a few pictures). Dagster's bookkeeping is per batch; the images are inside.

The stage's asset logs the evaluations itself, after its materializations, each pointing at its batch's
materialization from this run: the UI's check Partitions view counts only an evaluation that targets the
partition's latest materialization, and a check *step* in a run over a range of batches would record one result
for no partition. An image the run did not take (a `reprocess` of a few images) is judged from its stored results,
so a batch's result always covers the whole batch. Nothing blocks: a failing image stops on its own, the rest of
the batch goes on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from ..dagster_internals import JudgedMaterialization, log_as_one_batch
from ..partitions import batches
from ..vision.chunking import STORAGE_QUERY_KEYS, chunked
from .stage import RunImages

MAX_ROWS = 200  # images listed per result: a table the UI renders whole, a few tens of KB
MAX_PICTURES = 12  # thumbnails per result (10-25 KB each): the event stays a few hundred KB


@dataclass(frozen=True)
class ImageOutcome:
    image: str
    passed: bool
    description: str
    picture: str | None = None  # Markdown (a thumbnail as a data URI) for a reviewer; kept for a few failures only
    facts: dict[str, Any] = field(default_factory=dict)  # numbers summed over the batch ("crops": 3)


Judge = Callable[[str, str], "ImageOutcome | str"]  # (image, batch) -> its outcome from stored results, or why skipped


@dataclass(frozen=True)
class BatchCheck:
    asset: dg.AssetKey
    name: str
    severity: dg.AssetCheckSeverity
    description: str
    not_passed: str  # how a failed image reads in the summary: "rejected", "need review", "failed"

    @property
    def key(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(self.asset, self.name)

    @property
    def spec(self) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(self.name, asset=self.asset, partitions_def=batches, blocking=False,
                                 description=f"{self.description} One result per upload batch, listing the images "
                                 "that did not pass and why.")

    def evaluation(self, batch: str, outcomes: Sequence[ImageOutcome], skipped: Mapping[str, str],
                   judged: JudgedMaterialization | None, **batch_metadata: Any) -> dg.AssetCheckEvaluation:
        failed = [o for o in outcomes if not o.passed]
        if failed:
            description = f"{batch}: {len(failed)} of {len(outcomes)} images {self.not_passed}"
        else:
            description = f"{batch}: all {len(outcomes)} images passed"
        if skipped:
            description += f"; {len(skipped)} skipped"
        rows = [f"| `{o.image}` | {_cell(o.description)} |" for o in failed[:MAX_ROWS]]
        if len(failed) > MAX_ROWS:
            rows.append(f"| ... | {len(failed) - MAX_ROWS} more (the catalogue, `image_catalog`, lists every image) |")
        metadata: dict[str, Any] = {
            "batch": batch,
            "images": len(outcomes) + len(skipped),
            "passed_count": len(outcomes) - len(failed),
            "failed_count": len(failed),
            "skipped_count": len(skipped),
            "failed": dg.MetadataValue.md("\n".join(["| image | why |", "|---|---|", *rows])),
        }
        pictures = [o.picture for o in failed if o.picture][:MAX_PICTURES]
        if pictures:
            metadata["pictures"] = dg.MetadataValue.md("\n\n".join(pictures))
        if skipped:
            reasons = Counter(why.split(":", 1)[0] for why in skipped.values())
            metadata["skipped"] = dict(reasons)
        totals = Counter()
        for outcome in outcomes:
            totals.update(outcome.facts)
        metadata.update({f"total_{name}": value for name, value in totals.items()})
        metadata.update(batch_metadata)
        return dg.AssetCheckEvaluation(
            asset_key=self.asset, check_name=self.name, passed=not failed, partition=batch,
            target_materialization_data=judged, severity=self.severity, description=description,
            metadata=metadata,
        )

    def report(self, context: dg.AssetExecutionContext, taken: RunImages, outcomes: Mapping[str, ImageOutcome],
               skipped: Mapping[str, str], judge: Judge, **batch_metadata: Any) -> Iterator[dg.Output]:
        """Yield from the asset *after* its MaterializeResult: one evaluation per batch of the run."""
        judged = materializations_of_this_run(context, self.asset, list(taken.by_batch))
        unmatched = [batch for batch in taken.by_batch if batch not in judged]
        if unmatched:  # e.g. another run materialized them meanwhile: that run's result will count instead
            context.log.warning(f"{self.name}: no materialization of this run found for {unmatched[:10]}; their "
                                "results will not show as current")
        evaluations = []
        for batch, manifest in taken.manifests.items():
            mine, skips = whole_batch(batch, manifest.images, outcomes, skipped, judge)
            evaluations.append(self.evaluation(batch, mine, skips, judged.get(batch), **batch_metadata))
        log_as_one_batch(context, evaluations)
        if self.key in context.selected_asset_check_keys:
            # The check's own output carries no result: its results are the evaluations above.
            yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(self.key))

    def rejudge(self, context: dg.AssetExecutionContext, images_of: Mapping[str, Sequence[str]], judge: Judge,
                **batch_metadata: Any) -> list[str]:
        """Judge batches again from another asset's step (a reviewer's decisions arrived), every image from its
        stored results, each evaluation pointing at the latest materialization of the check's asset for that batch,
        whichever run made it. Returns the batches with no materialization to judge (left as they were)."""
        judged = latest_materializations(context.instance, self.asset, list(images_of))
        evaluations = []
        for batch, images in images_of.items():
            if batch in judged:
                mine, skips = whole_batch(batch, images, {}, {}, judge)
                evaluations.append(self.evaluation(batch, mine, skips, judged[batch], **batch_metadata))
        for evaluation in evaluations:  # two per batch touched; this run planned none of them, so one at a time
            context.log_event(evaluation)
        return [batch for batch in images_of if batch not in judged]


def whole_batch(batch: str, images: Sequence[str], outcomes: Mapping[str, ImageOutcome], skipped: Mapping[str, str],
                judge: Judge) -> tuple[list[ImageOutcome], dict[str, str]]:
    """Every image of the batch: this run's outcome or skip where it has one, else judged from stored results."""
    mine, skips = [], {}
    for image in images:
        if image in outcomes:
            mine.append(outcomes[image])
        elif image in skipped:
            skips[image] = skipped[image]
        else:
            stored = judge(image, batch)
            if isinstance(stored, str):
                skips[image] = stored
            else:
                mine.append(stored)
    return mine, skips


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")[:300]


def latest_materializations(instance: dg.DagsterInstance, asset: dg.AssetKey,
                            partition_keys: Sequence[str]) -> dict[str, JudgedMaterialization]:
    """batch -> its newest materialization, whichever run made it; one query per batch, since a shared `limit`
    would let one batch's long history crowd out another's."""
    judged: dict[str, JudgedMaterialization] = {}
    for key in partition_keys:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[key]), limit=1).records
        if records:
            judged[key] = JudgedMaterialization(storage_id=records[0].storage_id, run_id=records[0].run_id,
                                                timestamp=records[0].timestamp)
    return judged


def materializations_of_this_run(
    context: dg.AssetExecutionContext, asset: dg.AssetKey, partition_keys: Sequence[str]
) -> dict[str, JudgedMaterialization]:
    """batch -> this run's materialization of it, read back from the instance in a few queries per run."""
    judged: dict[str, JudgedMaterialization] = {}
    run_id = context.run.run_id
    for chunk in chunked(partition_keys, STORAGE_QUERY_KEYS):
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset, asset_partitions=chunk), limit=2 * len(chunk)
        ).records
        for record in records:  # newest first
            if record.run_id == run_id and record.partition_key not in judged:
                judged[record.partition_key] = JudgedMaterialization(
                    storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
                )
    return judged
