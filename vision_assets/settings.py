"""Every setting, read from the environment in one place. The README's configuration table lists the same names
(a test keeps the two in step). Secrets are passed to resources as `dg.EnvVar` so the UI never shows them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .vision.image_formats import DEFAULT_ALLOWED_FORMATS

DEFAULT_EXTENSIONS = ".jpg,.jpeg,.png,.gif,.webp,.bmp,.tif,.tiff,.jp2,.j2k,.avif"

# name -> (default, description). Defaults of None mean "unset".
ENVIRONMENT: dict[str, tuple[str | None, str]] = {
    "VISION_ASSETS_DATA_DIR": (".vision-assets", "One folder for everything local: the bucket folder (with its results) "
                               "and the Dagster instance (DAGSTER_HOME)."),
    "VISION_ASSETS_S3_BUCKET": (None, "Watch this S3 bucket instead of the local folder `<data dir>/bucket`."),
    "VISION_ASSETS_S3_ENDPOINT_URL": (None, "S3-compatible endpoint (MinIO, R2, a test server). Unset = AWS."),
    "VISION_ASSETS_S3_REGION": (None, "Region of the bucket."),
    "AWS_ACCESS_KEY_ID": (None, "S3 credentials (or any other boto3 credential source: profile, instance role)."),
    "AWS_SECRET_ACCESS_KEY": (None, "S3 credentials, with `AWS_ACCESS_KEY_ID`."),
    "VISION_ASSETS_PREFIX": ("", "Only objects under this key prefix are uploads."),
    "VISION_ASSETS_RESULTS_PREFIX": ("vision-assets-results/", "Where results go, in the same bucket or folder. "
                                     "Never treated as uploads."),
    "VISION_ASSETS_IMAGE_EXTENSIONS": (DEFAULT_EXTENSIONS, "Comma-separated extensions the sensor registers "
                                       "(`*` = every object). Others are counted in the sensor's log."),
    "VISION_ASSETS_ALLOWED_FORMATS": (",".join(sorted(DEFAULT_ALLOWED_FORMATS)), "Formats accepted after "
                                      "sniffing the magic bytes (Pillow names)."),
    "VISION_ASSETS_MAX_IMAGE_BYTES": (str(50 * 1024 * 1024), "Larger objects are rejected without download."),
    "VISION_ASSETS_MAX_IMAGE_PIXELS": ("120000000", "Larger images are rejected before decoding "
                                       "(decompression bombs)."),
    "VISION_ASSETS_MIN_IMAGE_SIDE": ("32", "Images with a shorter side (pixels) are rejected."),
    "VISION_ASSETS_BATCH_SIZE": ("256", "Most images in one run launched by the sensor."),
    "VISION_ASSETS_MAX_UPLOADS_PER_TICK": ("2000", "Most objects one sensor tick registers; the rest wait for "
                                           "the next tick."),
    "VISION_ASSETS_SENSOR_INTERVAL_SECONDS": ("15", "How often the upload sensor looks at the bucket."),
    "VISION_ASSETS_VERSION_LOOKBACK_SECONDS": ("900", "Re-uploads are detected when their LastModified is within "
                                               "this window of the newest processed upload."),
    "VISION_ASSETS_SETTLE_SECONDS": ("2", "Local folder only: files modified more recently wait for the next "
                                     "tick (they may still be being copied)."),
    "VISION_ASSETS_INGEST_THREADS": ("4", "Images fetched and decoded concurrently within a run."),
    "VISION_ASSETS_STORE_RETRIES": ("3", "Times a batch is retried when the store cannot be reached."),
    "VISION_ASSETS_STORE_RETRY_SECONDS": ("10", "Wait before each of those retries."),
}


def env(name: str) -> str | None:
    default, _ = ENVIRONMENT[name]
    return os.environ.get(name, default)


def _int(name: str) -> int:
    value = env(name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None


def _csv(name: str) -> frozenset[str]:
    return frozenset(part.strip() for part in (env(name) or "").split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    s3_bucket: str | None
    s3_endpoint_url: str | None
    s3_region: str | None
    prefix: str
    results_prefix: str
    image_extensions: frozenset[str]
    allowed_formats: frozenset[str]
    max_image_bytes: int
    max_image_pixels: int
    min_image_side: int
    batch_size: int
    max_uploads_per_tick: int
    sensor_interval_seconds: int
    version_lookback_seconds: int
    settle_seconds: int
    ingest_threads: int
    store_retries: int
    store_retry_seconds: int

    @property
    def local_bucket_dir(self) -> Path:
        return self.data_dir / "bucket"

    @classmethod
    def from_env(cls) -> Settings:
        extensions = _csv("VISION_ASSETS_IMAGE_EXTENSIONS")
        return cls(
            data_dir=Path(env("VISION_ASSETS_DATA_DIR")).expanduser().resolve(),
            s3_bucket=env("VISION_ASSETS_S3_BUCKET") or None,
            s3_endpoint_url=env("VISION_ASSETS_S3_ENDPOINT_URL") or None,
            s3_region=env("VISION_ASSETS_S3_REGION") or None,
            prefix=env("VISION_ASSETS_PREFIX"),
            results_prefix=env("VISION_ASSETS_RESULTS_PREFIX"),
            image_extensions=frozenset() if "*" in extensions else frozenset(e.lower() for e in extensions),
            allowed_formats=frozenset(f.upper() for f in _csv("VISION_ASSETS_ALLOWED_FORMATS")),
            max_image_bytes=_int("VISION_ASSETS_MAX_IMAGE_BYTES"),
            max_image_pixels=_int("VISION_ASSETS_MAX_IMAGE_PIXELS"),
            min_image_side=_int("VISION_ASSETS_MIN_IMAGE_SIDE"),
            batch_size=_int("VISION_ASSETS_BATCH_SIZE"),
            max_uploads_per_tick=_int("VISION_ASSETS_MAX_UPLOADS_PER_TICK"),
            sensor_interval_seconds=_int("VISION_ASSETS_SENSOR_INTERVAL_SECONDS"),
            version_lookback_seconds=_int("VISION_ASSETS_VERSION_LOOKBACK_SECONDS"),
            settle_seconds=_int("VISION_ASSETS_SETTLE_SECONDS"),
            ingest_threads=_int("VISION_ASSETS_INGEST_THREADS"),
            store_retries=_int("VISION_ASSETS_STORE_RETRIES"),
            store_retry_seconds=_int("VISION_ASSETS_STORE_RETRY_SECONDS"),
        )
