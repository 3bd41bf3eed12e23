"""Settings in, resources and the `Definitions` out: assets, checks, jobs, sensors and resources. No side effects
at import (the code location, `definitions.py`, calls `definitions_from`)."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import dagster as dg

from .assets.detections import build_detections
from .assets.embeddings import build_embeddings
from .assets.image_catalog import image_catalog
from .assets.qdrant_index import build_qdrant_index
from .assets.referee_opinions import build_referee_opinions
from .assets.review_accuracy import review_accuracy
from .assets.review_decisions import review_decisions
from .assets.review_queue import review_queue
from .assets.source_images import source_images
from .assets.specialist_labels import build_specialist_labels
from .jobs import (
    apply_reviews,
    build_index_graph,
    delete_images,
    measure_accuracy,
    pipeline_job,
    refresh_catalog,
    refresh_review_queue,
    reindex,
)
from .resources import (
    CallbackSettings,
    CatalogSettings,
    FailedImageRetries,
    ImageSelection,
    ImageStore,
    IngestPolicy,
    LabelingSettings,
    LocalImageStore,
    QdrantResource,
    ReviewSettings,
    S3Connection,
    S3ImageStore,
    StagePolicy,
    UploadPolicy,
)
from .resources.models import committee_resources
from .run_placement import gpu_run_tags
from .sensors.callback_sensor import callback_sensor
from .sensors.catalog_refresh import make_catalog_refresh_sensor
from .sensors.dead_worker_sensor import make_dead_worker_sensor
from .sensors.failed_image_retry import make_failed_image_retry_sensor
from .sensors.index_graph_sensor import make_index_graph_sensor
from .sensors.index_repair_sensor import make_index_repair_sensor
from .sensors.review_sensor import make_review_sensor
from .sensors.stranded_steps import make_stranded_step_sensor
from .sensors.upload_sensor import make_upload_sensor
from .settings import DEFAULTS, Settings, variable


def _secret(settings: Settings, name: str) -> dg.EnvVar | None:
    """A secret goes to its resource as an `EnvVar` (read when the run starts, never shown in the UI); unset, the
    library finds its own (boto3: profile, instance role)."""
    return dg.EnvVar(variable(name)) if getattr(settings, name) else None


def image_store_from(settings: Settings) -> ImageStore:
    common = {
        "prefix": settings.prefix,
        "results_prefix": settings.results_prefix,
        "image_extensions": sorted(settings.image_extensions),
    }
    if settings.s3_bucket:
        # Credentials go in as EnvVar (never shown in the UI); unset, boto3 finds them itself (profile, role).
        s3 = S3Connection(
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=_secret(settings, "aws_access_key_id"),
            aws_secret_access_key=_secret(settings, "aws_secret_access_key"),
            max_attempts=settings.s3_attempts,
        )
        return S3ImageStore(s3=s3, bucket=settings.s3_bucket, events_queue_url=settings.s3_events_queue,
                            timeout_seconds=settings.s3_timeout_seconds, hedge_seconds=settings.s3_hedge_seconds,
                            reconcile_seconds=settings.s3_reconcile_seconds, **common)
    settings.local_bucket_dir.mkdir(parents=True, exist_ok=True)
    return LocalImageStore(root=str(settings.local_bucket_dir), settle_seconds=settings.settle_seconds, **common)


def model_resources_from(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    return committee_resources(settings) | {
        "labeling": LabelingSettings(
            routes=settings.routes, review_thresholds=settings.review_thresholds,
            default_review_threshold=settings.review_threshold, crop_margin=settings.crop_margin,
            scenes=settings.scene_tags, scene_tag_threshold=settings.scene_tag_threshold,
            coral_scene_tag=settings.coral_scene_tag, coral_scene_threshold=settings.coral_scene_threshold,
            second_opinion_margin=settings.second_opinion_margin,
        ),
        "qdrant": QdrantResource(
            url=settings.qdrant_url,
            api_key=_secret(settings, "qdrant_api_key"),
            path=None if settings.qdrant_url else str(settings.qdrant_path),
            collection_prefix=settings.qdrant_collection_prefix,
            lock_wait_seconds=settings.qdrant_lock_wait_seconds,
            hnsw_threshold=settings.qdrant_hnsw_threshold,
            **asdict(settings.qdrant_layout),
        ),
    }


@contextmanager
def resources_outside_dagster(**resources: dg.ConfigurableResource) -> Iterator[Any]:
    """Resources for code that runs outside a Dagster run (the CLI, a notebook): `dg.build_resources` resolves their
    `EnvVar` settings (credentials from the environment) the way a run would. Attributes by name."""
    with dg.build_resources(resources) as built:
        yield built


def build_definitions(
    image_store: ImageStore,
    models: dict[str, dg.ConfigurableResource],
    upload_policy: UploadPolicy = UploadPolicy(),
    ingest_policy: IngestPolicy = IngestPolicy(),
    sensor_interval_seconds: int = 15,
    catalog: CatalogSettings = CatalogSettings(),
    catalog_refresh_seconds: int = DEFAULTS.catalog_refresh_seconds,
    callback: CallbackSettings = CallbackSettings(),
    review: ReviewSettings = ReviewSettings(),
    stage_policy: StagePolicy = StagePolicy(),
    failed_image_retries: FailedImageRetries = FailedImageRetries(),
    pipeline_run_tags: dict[str, object] | None = None,
) -> dg.Definitions:
    detector, embedder, specialists = models["detector"], models["embedder"], models["specialists"]
    referee = models["referee"]
    labeling = models["labeling"]
    process_images = pipeline_job(pipeline_run_tags)
    return dg.Definitions(
        assets=[
            source_images,
            build_detections(detector.identity),
            build_embeddings(embedder.identity, labeling.scene_signature),
            build_specialist_labels(specialists.identity, embedder.identity),
            build_referee_opinions(referee.identity, f"{referee.mode}|captions={referee.captions}"),
            build_qdrant_index(embedder.identity),
            image_catalog,
            review_decisions,
            review_queue,
            review_accuracy,
        ],
        jobs=[process_images, reindex, refresh_catalog, delete_images, apply_reviews, measure_accuracy,
              refresh_review_queue, build_index_graph],
        sensors=[make_upload_sensor(process_images, sensor_interval_seconds), callback_sensor,
                 make_index_repair_sensor(process_images, sensor_interval_seconds), make_index_graph_sensor(sensor_interval_seconds),
                 # Failed runs are a minute-scale matter: their waits are minutes, their queries grow with failures.
                 make_failed_image_retry_sensor(process_images, max(sensor_interval_seconds, 60)),
                 make_dead_worker_sensor(sensor_interval_seconds), make_review_sensor(sensor_interval_seconds),
                 make_stranded_step_sensor(sensor_interval_seconds),
                 make_catalog_refresh_sensor(catalog_refresh_seconds)],
        resources={"image_store": image_store, "upload_policy": upload_policy, "ingest_policy": ingest_policy,
                   "catalog": catalog, "callback": callback, "review": review, "stage_policy": stage_policy,
                   "failed_image_retries": failed_image_retries, "image_selection": ImageSelection()} | models,
        executor=dg.in_process_executor,
    )


def definitions_from(settings: Settings, image_store: ImageStore | None = None) -> dg.Definitions:
    return build_definitions(
        image_store=image_store or image_store_from(settings),
        models=model_resources_from(settings),
        upload_policy=UploadPolicy(
            batch_size=settings.batch_size,
            max_uploads_per_tick=settings.max_uploads_per_tick,
            list_keys_per_tick=settings.list_keys_per_tick,
            version_lookback_seconds=settings.version_lookback_seconds,
        ),
        ingest_policy=IngestPolicy(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            min_side=settings.min_image_side,
            allowed_formats=sorted(settings.allowed_formats),
            threads=settings.ingest_threads,
            working_side=settings.working_image_side,
            model_input_side=settings.detector_image_size,
        ),
        sensor_interval_seconds=settings.sensor_interval_seconds,
        catalog=CatalogSettings(near_duplicate_distance=settings.near_duplicate_distance,
                                full_listing_hours=settings.catalog_full_listing_hours),
        catalog_refresh_seconds=settings.catalog_refresh_seconds,
        callback=CallbackSettings(
            url=settings.callback_url,
            secret=_secret(settings, "callback_secret"),
            allow_private=settings.callback_allow_private,
            base_backoff_seconds=settings.callback_backoff_seconds,
            max_attempts=settings.callback_max_attempts,
        ),
        review=ReviewSettings(pictures=settings.review_pictures, picture_side=settings.review_picture_side,
                              tasks=settings.review_tasks, sample_rate=settings.review_sample_rate,
                              target_precision=settings.review_target_precision,
                              label_studio_url=settings.label_studio_url),
        stage_policy=StagePolicy(chunk_size=settings.chunk_size, patience_seconds=settings.store_patience_seconds,
                                 first_retry_seconds=settings.store_retry_seconds),
        failed_image_retries=FailedImageRetries(attempts=settings.failed_image_retries,
                                                first_wait_seconds=settings.failed_image_retry_seconds),
        pipeline_run_tags=gpu_run_tags(settings.run_gpus),
    )

