"""The one `Definitions` of the code location: assets, checks, the upload sensor and resources from settings."""

import os

import dagster as dg
from dagster_aws.s3 import S3Resource

from .assets.ingest import source_images
from .checks.validation import image_valid
from .jobs import process_images
from .resources import ImageStore, IngestPolicy, LocalImageStore, S3ImageStore, UploadPolicy
from .sensors.upload_sensor import make_upload_sensor
from .settings import Settings


def image_store_from(settings: Settings) -> ImageStore:
    common = {
        "prefix": settings.prefix,
        "results_prefix": settings.results_prefix,
        "image_extensions": sorted(settings.image_extensions),
    }
    if settings.s3_bucket:
        # Credentials go in as EnvVar (never shown in the UI); unset, boto3 finds them itself (profile, role).
        secret = lambda name: dg.EnvVar(name) if os.environ.get(name) else None  # noqa: E731
        s3 = S3Resource(
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=secret("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=secret("AWS_SECRET_ACCESS_KEY"),
        )
        return S3ImageStore(s3=s3, bucket=settings.s3_bucket, **common)
    settings.local_bucket_dir.mkdir(parents=True, exist_ok=True)
    return LocalImageStore(root=str(settings.local_bucket_dir), settle_seconds=settings.settle_seconds, **common)


def build_definitions(
    image_store: ImageStore,
    upload_policy: UploadPolicy = UploadPolicy(),
    ingest_policy: IngestPolicy = IngestPolicy(),
    sensor_interval_seconds: int = 15,
) -> dg.Definitions:
    return dg.Definitions(
        assets=[source_images],
        asset_checks=[image_valid],
        jobs=[process_images],
        sensors=[make_upload_sensor(sensor_interval_seconds)],
        resources={"image_store": image_store, "upload_policy": upload_policy, "ingest_policy": ingest_policy},
        executor=dg.in_process_executor,
    )


def definitions_from(settings: Settings) -> dg.Definitions:
    return build_definitions(
        image_store=image_store_from(settings),
        upload_policy=UploadPolicy(
            batch_size=settings.batch_size,
            max_uploads_per_tick=settings.max_uploads_per_tick,
            version_lookback_seconds=settings.version_lookback_seconds,
        ),
        ingest_policy=IngestPolicy(
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_image_pixels,
            min_side=settings.min_image_side,
            allowed_formats=sorted(settings.allowed_formats),
            threads=settings.ingest_threads,
            store_retries=settings.store_retries,
            store_retry_seconds=settings.store_retry_seconds,
        ),
        sensor_interval_seconds=settings.sensor_interval_seconds,
    )


defs = definitions_from(Settings.from_env())
