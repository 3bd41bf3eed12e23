"""`qdrant_index`: every valid image and crop of the batch upserted into Qdrant; rejected images' old points
removed; and the index audited against what the pipeline indexed before. It reads only what earlier stages stored,
never a model, which is why the `reindex` job is this asset alone. Its checks: `index_consistent` (per batch: each
image has exactly its points) and `index_complete` (the index still holds what earlier batches indexed)."""

import functools
import time
from collections import Counter
from dataclasses import dataclass

import dagster as dg

from ..keys import EMBEDDINGS, QDRANT_INDEX, REFEREE_OPINIONS, SPECIALIST_LABELS
from ..partitions import batches
from ..resources import CallbackSettings, ImageSelection, ImageStore, QdrantResource, StagePolicy
from ..vision.batches import BatchIndexed
from ..vision.callback import Outbox, finished_message
from ..vision.cost import BatchCost, CostEstimate, estimate
from ..vision.index.audit import IndexAudit, audit_index
from ..vision.index.ledger import sampled_indexed
from ..vision.index.stored_points import StoredResults, index_points, read_stored, stored_points
from ..vision.index.vector_index import ImagePoints
from ..vision.models.device_time import batch_device_seconds
from ..vision.records import IndexRecord, LabelsRecord, SourceImageRecord
from ..vision.storage.overlap import BackgroundWrites
from ..vision.storage.results_store import INDEX
from .batch_checks import BatchCheck, ImageOutcome
from .stage import (
    BatchMetadata,
    batch_counts,
    each_image,
    judged_from_record,
    read_ahead,
    run_images,
    stage_asset,
    step_start,
    transient_faults_retried,
)

UNINDEXED_POINTS = "unindexed_points"  # embedded index: points not in an HNSW graph yet, after the run
UNMERGED_SHARDS = "unmerged_shards"  # embedded index: sealed shards waiting for compact_index_op, after the run
REINDEX_TAG = "vision_assets/reindex"  # runs that only rebuild the index: nothing new to announce

@dataclass(frozen=True)
class FailedEmbeddings:
    """An image whose embeddings cannot be indexed (none stored, or they failed their check), and why."""

    why: str


index_consistency = BatchCheck(
    asset=QDRANT_INDEX,
    name="index_consistent",
    severity=dg.AssetCheckSeverity.ERROR,
    description="Every image and crop of the batch has its point in Qdrant and no other point carries its image id.",
    not_passed="failed",
)

index_completeness = dg.AssetCheckSpec(
    "index_complete",
    asset=QDRANT_INDEX,
    blocking=False,
    description="Every image the pipeline indexed earlier still has its point in Qdrant (a run checks a random "
    "sample of about 1,000 of them, so its cost does not grow with the catalogue; the `index_repair` sensor checks "
    "all of them every ten minutes). Fails when the index lost points (folder deleted or restored from an old copy, "
    "server wiped, collection prefix changed); the `index_repair` sensor then re-indexes them from the results "
    "store.",
)


def index_outcome(record: IndexRecord) -> ImageOutcome:
    return ImageOutcome(
        record.partition_key,
        passed=not record.problems,
        description="; ".join(record.problems) or f"image point and {len(record.crop_points)} crop point(s), no strays",
        facts={"crop_points": len(record.crop_points)},
    )


def completeness_result(audit: IndexAudit, where: str) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=index_completeness.name,
        asset_key=QDRANT_INDEX,
        passed=audit.complete,
        severity=dg.AssetCheckSeverity.ERROR,
        description=audit.describe(where),
        metadata={"indexed_earlier": audit.expected, "sampled_from_batches": audit.sampled_from or 0,
                  "missing_count": len(audit.missing),
                  "missing_examples": audit.missing[:20], "qdrant": where},
    )


def build_qdrant_index(embedder_identity: str) -> dg.AssetsDefinition:
    @dg.asset(
        **stage_asset(
            key=QDRANT_INDEX,
            deps=[EMBEDDINGS, SPECIALIST_LABELS, REFEREE_OPINIONS],
            pool="qdrant",
            kinds={"qdrant"},
            code_version=f"2|{embedder_identity}",
            check_specs=[index_consistency.spec, index_completeness],
            description="Points in the `images` and `crops` collections (cosine), ids derived from the image and "
            "crop identity so re-runs overwrite; payload: source URI, batch, sha256, pHash, box, labels with "
            "confidences and model ids. Reads only stored results (no model): the `reindex` job rebuilds the index "
            "with it.",
        )
    )
    @transient_faults_retried
    def qdrant_index(
        context: dg.AssetExecutionContext,
        image_store: ImageStore,
        qdrant: QdrantResource,
        callback: CallbackSettings,
        stage_policy: StagePolicy,
        image_selection: ImageSelection,
    ):
        results = image_store.results
        taken = run_images(context, results, image_selection)
        progress, resumed, done, skipped, todo = step_start(context, results, taken, "qdrant_index")
        valid: dict[str, SourceImageRecord] = {}  # this attempt's valid images
        bad: dict[str, str] = {}  # image -> why its embeddings cannot be indexed
        outbox = Outbox(results) if callback.enabled and context.run.tags.get(REINDEX_TAG) != "true" else None
        # What the pipeline indexed before, in other batches, sampled: the index must still hold it.
        all_batches = context.instance.get_dynamic_partitions(batches.name)
        earlier, sampled_from = sampled_indexed(results, all_batches, set(taken.by_batch), seed=context.run.run_id)
        started = time.perf_counter()
        records, crop_count = {}, 0
        reindexing = context.run.tags.get(REINDEX_TAG) == "true"

        def read_points(image: str, source: SourceImageRecord, stored: StoredResults,
                        ) -> tuple[ImagePoints, LabelsRecord, Counter] | FailedEmbeddings:
            embedded = stored.embedded
            if embedded is None or embedded.problems:
                return FailedEmbeddings("; ".join(embedded.problems) if embedded else "no embeddings record")
            # What every model stage spent on the image, by model (the labels carry the referee's too).
            cost = Counter(stored.detections.device_seconds) + Counter(embedded.device_seconds) + Counter(
                stored.labels.device_seconds)
            return stored_points(source, stored), stored.labels, cost
        spent: dict[str, Counter] = {}  # image -> its models' seconds

        with qdrant.open(on_wait=context.log.info) as index, BackgroundWrites() as writes:
            for read in read_ahead(results, taken, todo, stage_policy.chunk_size, read_points,
                                   alongside=lambda image: read_stored(results, image)):
                skipped |= read.skipped
                failed = {key: read.inputs.pop(key).why for key in list(read.inputs)
                          if isinstance(read.inputs[key], FailedEmbeddings)}
                bad |= failed
                skipped |= {key: f"embeddings failed their check: {why}" for key, why in failed.items()}
                valid |= read.sources
                points = [image for image, *_ in read.inputs.values()]
                written = index_points(index, points, qdrant.upsert_batch_size) if points else []
                if reindexing:  # a rebuild writes the whole catalogue: its graph is built as it goes, flat per chunk
                    index.build_graph(at_least=qdrant.hnsw_threshold, tell=context.log.info)
                for image, record in zip(points, written, strict=True):
                    key = image.partition_key
                    records[key] = record
                    if outbox:  # finished: the callback sensor announces it
                        labels = read.inputs[key][1]
                        outbox.add(finished_message(valid[key], image.image_payload["top_labels"],
                                                    labels.needing_review, record.problems,
                                                    disagreements=labels.disagreements))
                crop_count += sum(len(p.crop_indexes) for p in points)
                spent |= {key: cost for key, (_, _, cost) in read.inputs.items()}
                done |= set(read.inputs)
                writes.submit([functools.partial(results.write, r.partition_key, INDEX, r) for r in written],
                              then=progress.after_writing([*read.inputs, *failed, *read.skipped]))
            # A re-upload that is now rejected must not stay findable under its old content: its points go, by the
            # ids its last indexing recorded. (A superseded entry's image belongs to its newer batch: left alone.)
            gone = [key for key, why in skipped.items() if not why.startswith("superseded")]
            recorded = each_image(lambda key: results.read(key, INDEX, IndexRecord), gone)
            index.delete_points(gone, [p for record in recorded if record for p in record.crop_points])
            audit = audit_index(index, earlier, sampled_from)
            unindexed = sum(index.unindexed().values())  # what `index_graph` builds, outside this run
            unmerged = index.unmerged()  # and what it merges (a reindex seals shards as it goes)
        seconds = time.perf_counter() - started
        if outbox:
            for key, why in bad.items():
                outbox.add(finished_message(valid[key], [], [], [why], failed_check="embeddings_valid"))
        judge = judged_from_record(results, INDEX, IndexRecord, index_outcome, "not indexed yet: materialize qdrant_index")
        for batch, manifest in taken.manifests.items():  # the ledger the index audit reads
            indexed = [image for image in manifest.images if image not in skipped and (
                not records[image].problems if image in records else _indexed(judge(image, batch)))]
            results.write_batch_indexed(BatchIndexed(batch=batch, indexed=indexed))
        metadata = BatchMetadata(context)
        run_figures = {"run_crop_points": crop_count, "run_seconds": round(seconds, 3), "qdrant": qdrant.where,
                       UNINDEXED_POINTS: unindexed, UNMERGED_SHARDS: unmerged, "run_images_resumed": len(resumed)}
        costs = batch_device_seconds(spent.items(), taken.batch_of)
        for batch, counts in batch_counts(taken, done, skipped).items():
            metadata.add(batch, counts | run_figures | batch_cost(costs.get(batch, {}), counts["done"]))
        progress.clear()
        yield metadata.materialize()
        yield from index_consistency.report(context, taken, {k: index_outcome(r) for k, r in records.items()},
                                            skipped, judge)
        if index_completeness.key in context.selected_asset_check_keys:
            yield completeness_result(audit, qdrant.where)

    return qdrant_index


def batch_cost(seconds: dict[str, float], images: int) -> dict:
    """What the batch's images cost the models (every stage, by model, as the stages recorded it): what a backfill
    of N such batches costs is N times `batch_device_seconds_total` on one device."""
    total = round(sum(seconds.values()), 3)
    return {"batch_device_seconds": seconds, "batch_device_seconds_total": total,
            "device_seconds_per_image": round(total / images, 4) if images else 0.0}


def backfill_estimate(instance: dg.DagsterInstance, batch_count: int | None = None, sample: int = 20,
                      devices: int = 1) -> CostEstimate:
    """What processing `batch_count` batches (default: every registered one, a backfill of everything) will cost the
    models, at the rate of the last `sample` batches indexed, each the size of their average."""
    samples = []
    for record in instance.fetch_materializations(QDRANT_INDEX, limit=sample).records:
        metadata = record.asset_materialization.metadata
        if "batch_device_seconds" in metadata and "done" in metadata:
            samples.append(BatchCost(int(metadata["done"].value), dict(metadata["batch_device_seconds"].value)))
    count = batch_count if batch_count is not None else len(instance.get_dynamic_partitions(batches.name))
    per_batch = sum(s.images for s in samples) / len(samples) if samples else 0
    return estimate(samples, round(count * per_batch), devices)


def _indexed(outcome: ImageOutcome | str) -> bool:
    return isinstance(outcome, ImageOutcome) and outcome.passed
