"""Every setting, read from the environment in one place. The README's configuration table lists the same names
(a test keeps the two in step). Secrets are passed to resources as `dg.EnvVar` so the UI never shows them; code
outside a run resolves them through `dg.build_resources` (see `cli.py`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .vision.images.formats import DEFAULT_ALLOWED_FORMATS
from .vision.models import defaults
from .vision.committee.routing import CORAL, DEFAULT_ROUTES, format_routes, parse_routes
from .vision.committee.scenes import CORAL_TAG, DEFAULT_SCENES, format_scenes, parse_scenes

DEFAULT_EXTENSIONS = ".jpg,.jpeg,.png,.gif,.webp,.bmp,.tif,.tiff,.jp2,.j2k,.avif,.heic,.heif"

# name -> (default, description). Defaults of None mean "unset".
ENVIRONMENT: dict[str, tuple[str | None, str]] = {
    "VISION_ASSETS_DATA_DIR": (".vision-assets", "One folder for everything local: the bucket folder (with its results) "
                               "and the Dagster instance (DAGSTER_HOME)."),
    "VISION_ASSETS_S3_BUCKET": (None, "Watch this S3 bucket instead of the local folder `<data dir>/bucket`."),
    "VISION_ASSETS_S3_ENDPOINT_URL": (None, "S3-compatible endpoint (MinIO, R2, a test server). Unset = AWS."),
    "VISION_ASSETS_S3_REGION": (None, "Region of the bucket."),
    "VISION_ASSETS_S3_EVENTS_QUEUE": (None, "URL of an SQS queue that receives the bucket's S3 event notifications "
                                      "(`s3:ObjectCreated:*`): the upload sensor reads it instead of listing the "
                                      "bucket every tick. For buckets past about 10,000 objects."),
    "VISION_ASSETS_S3_RECONCILE_SECONDS": ("3600", "With an events queue: how often the sensor still lists the whole "
                                           "bucket, to catch missed events and deleted objects."),
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
    "VISION_ASSETS_BATCH_SIZE": ("256", "Most images in one upload batch (a partition, and the run the sensor launches for it)."),
    "VISION_ASSETS_MAX_UPLOADS_PER_TICK": ("20000", "Most objects one sensor tick registers; the rest wait for "
                                           "the next tick."),
    "VISION_ASSETS_SENSOR_INTERVAL_SECONDS": ("15", "How often the upload sensor looks at the bucket."),
    "VISION_ASSETS_VERSION_LOOKBACK_SECONDS": ("900", "Re-uploads are detected when their LastModified is within "
                                               "this window of the newest processed upload."),
    "VISION_ASSETS_SETTLE_SECONDS": ("2", "Local folder only: files modified more recently wait for the next "
                                     "tick (they may still be being copied)."),
    "VISION_ASSETS_INGEST_THREADS": ("4", "Images fetched and decoded concurrently within a run."),
    "VISION_ASSETS_WORKING_IMAGE_SIDE": ("4096", "Long side (pixels) of the normalised copy every model stage reads "
                                         "and every box is measured in; larger images are scaled down once, at "
                                         "ingest (the original stays in the bucket). 0 = full resolution."),
    "VISION_ASSETS_STORE_RETRIES": ("5", "Times a stage retries when the store or Qdrant cannot be reached, "
                                    "before its run fails and is re-run (see `VISION_ASSETS_RUN_RETRIES`)."),
    "VISION_ASSETS_STORE_RETRY_SECONDS": ("5", "Wait before the first of those retries; it doubles each time "
                                          "(5 retries from 5 s ride out about 2.5 minutes)."),
    "VISION_ASSETS_RUN_RETRIES": ("2", "`vision-assets dev`: times Dagster re-executes a failed run from its failed "
                                  "step (a killed run worker, a store outage longer than the stage retries). A bad "
                                  "image never fails a run; a bug or a broken index fails it without retries."),
    "VISION_ASSETS_FAILED_IMAGE_RETRIES": ("3", "Times the pipeline itself re-runs an image whose run failed for "
                                           "good (Dagster's run retries used up, or a failure they do not retry), "
                                           "from the stage that failed; then the sensor's log names it for a person."),
    "VISION_ASSETS_FAILED_IMAGE_RETRY_SECONDS": ("300", "Wait after such a failure before the first of those "
                                                 "re-runs; it doubles for each further one."),
    "VISION_ASSETS_MAX_CONCURRENT_RUNS": ("2", "`vision-assets dev`: runs in flight at once; the rest wait in "
                                          "Dagster's queue. Model stages still take turns on the `gpu` pool."),
    "VISION_ASSETS_CHUNK_SIZE": ("16", "Images a stage holds decoded at once: a run's memory follows this, not the "
                                 "batch size."),
    "VISION_ASSETS_QDRANT_LOCK_WAIT_SECONDS": ("60", "Embedded Qdrant admits one process at a time: how long a run or "
                                               "a search waits for the other to finish before giving up (a run then "
                                               "retries)."),
    "VISION_ASSETS_QDRANT_HNSW_THRESHOLD": ("20000", "Embedded Qdrant (Edge) builds its HNSW search graph when a run "
                                            "or `reindex` closes the index with at least this many points not in it "
                                            "yet; below that, search reads those points exactly (a few ms)."),
    "VISION_ASSETS_OFFLINE_MODELS": (None, "A folder from `vision-assets models build-offline`: the model cache, the "
                                     "ids to load from it and the detector's offline thresholds come from it (explicit "
                                     "model settings still win)."),
    "VISION_ASSETS_MODEL_CACHE": (None, "A folder laid out as the libraries' caches (`huggingface/hub/models--org--name"
                                  "/...`, `ultralytics/yolov8n.pt`): hub ids resolve there first (air-gapped "
                                  "machines), downloads land there, and CLIP's prompt vectors are kept there. Unset = "
                                  "each library's own cache."),
    "VISION_ASSETS_DEVICE": ("auto", "`auto` (CUDA when present), `cpu`, `cuda`, `cuda:1`, ..."),
    "VISION_ASSETS_PRECISION": ("auto", "`auto` (each model's measured choice: bf16 for CLIP and the experts where "
                                "the CPU or GPU computes in bf16, except the wildlife expert on a CPU; fp32 for the "
                                "detector on a CPU, fp16 on a GPU), or `fp32`, `bf16`, `fp16` (CUDA only) for every "
                                "model."),
    "VISION_ASSETS_DETECTOR_MODEL": (defaults.DETECTOR_MODEL, "Router checkpoint: an ultralytics name (`yolov8m.pt` on "
                                     "a GPU) or a local path."),
    "VISION_ASSETS_DETECTOR_CONFIDENCE": ("0.25", "Detections under this confidence are dropped."),
    "VISION_ASSETS_DETECTOR_MAX_DETECTIONS": ("50", "Most objects kept per image."),
    "VISION_ASSETS_DETECTOR_IMAGE_SIZE": ("640", "Inference size (pixels, long side)."),
    "VISION_ASSETS_DETECTOR_BATCH_SIZE": ("16", "Images per detector forward pass."),
    "VISION_ASSETS_CLIP_MODEL": (defaults.CLIP_ARCHITECTURE, "OpenCLIP architecture (with a pretrained tag), "
                                 "`hf-hub:org/repo` or `local-dir:/path`."),
    "VISION_ASSETS_CLIP_PRETRAINED": (defaults.CLIP_PRETRAINED, "OpenCLIP pretrained tag or weights file."),
    "VISION_ASSETS_CLIP_BATCH_SIZE": ("64", "Images or texts per CLIP forward pass."),
    "VISION_ASSETS_DOG_BREEDS_MODEL": (defaults.DOG_MODEL, "Dog breed expert (transformers id or folder)."),
    "VISION_ASSETS_CAT_BREEDS_MODEL": (defaults.CAT_MODEL, "Cat breed expert."),
    "VISION_ASSETS_WILDLIFE_MODEL": (defaults.WILDLIFE_MODEL, "Wildlife expert: BioCLIP over the Tree of Life "
                                     "(kingdom to species and common name; `hf-hub:imageomics/bioclip-2` also "
                                     "works), or any transformers image classifier, e.g. the iNat21 ViT-L/14 "
                                     f"`{defaults.INAT21_WILDLIFE_MODEL}` (non-commercial)."),
    "VISION_ASSETS_CORAL_HEALTH_MODEL": (defaults.CORAL_MODEL, "Coral health expert "
                                         "(whole images gated by the CLIP reef score). Empty = no coral stage."),
    "VISION_ASSETS_SPECIALIST_BATCH_SIZE": ("32", "Crops per expert forward pass."),
    "VISION_ASSETS_SPECIALIST_TOP_K": ("3", "Labels kept per crop, best first."),
    "VISION_ASSETS_DROP_LABELS": ("test", "Comma-separated junk classes never reported (some published models "
                                  "carry a stray `test` class)."),
    "VISION_ASSETS_REVIEW_THRESHOLD": ("0.5", "A top label under this confidence is flagged `needs_review`."),
    "VISION_ASSETS_REVIEW_THRESHOLDS": ("", "Per-expert overrides: `dog_breeds=0.6,coral_health=0.7`."),
    "VISION_ASSETS_ROUTES": (format_routes(DEFAULT_ROUTES), "Detector class -> expert."),
    "VISION_ASSETS_CROP_MARGIN": ("0.1", "Crops grow by this fraction of the box on each side."),
    "VISION_ASSETS_SCENE_TAGS": (format_scenes(DEFAULT_SCENES), "Scene vocabulary for whole images: `tag` or "
                                 "`tag=CLIP prompt`, comma-separated. Each image gets the tags CLIP gives at least "
                                 "`VISION_ASSETS_SCENE_TAG_THRESHOLD` (payload `scene_tags`, search `--scene`)."),
    "VISION_ASSETS_SCENE_TAG_THRESHOLD": ("0.2", "Zero-shot probability (among the vocabulary) a scene tag needs."),
    "VISION_ASSETS_CORAL_SCENE_TAG": (CORAL_TAG, "The scene tag that gates the coral expert (must be in the "
                                      "vocabulary)."),
    "VISION_ASSETS_CORAL_SCENE_THRESHOLD": ("0.5", "Probability of that tag above which the coral expert sees the "
                                            "image."),
    "VISION_ASSETS_SECOND_OPINION_MARGIN": ("0.5", "CLIP audits every crop: when its zero-shot answer beats the "
                                            "detector's class or the expert's label by this much probability, the "
                                            "crop is flagged for review (`committee_agrees` check). Above 1 = never."),
    "VISION_ASSETS_REVIEW_PICTURES": ("1", "`1`: thumbnails with boxes and labels in each image's metadata, the crops "
                                      "that need review and previews of rejected files in the check results. `0`: "
                                      "words only (a smaller event log)."),
    "VISION_ASSETS_REVIEW_PICTURE_SIDE": ("320", "Long side of those thumbnails, pixels."),
    "VISION_ASSETS_REVIEW_TASKS": ("1", "`1`: every image that needs review (an expert under its threshold, CLIP "
                                   "disagreeing) gets a Label Studio task, `<results prefix>~review/tasks/<image>.json`."
                                   " `0`: none."),
    "VISION_ASSETS_REVIEW_SAMPLE_RATE": ("0.02", "Share of the images that need no review sent for review anyway "
                                         "(chosen by a hash of the image id, so the same ones every time): without "
                                         "them the measured accuracy only knows doubtful labels."),
    "VISION_ASSETS_REVIEW_TARGET_PRECISION": ("0.95", "Precision the trusted labels (those at or above a review "
                                              "threshold) should reach: `review_accuracy` suggests the lowest "
                                              "threshold per expert that reaches it on the reviewed examples."),
    "VISION_ASSETS_LABEL_STUDIO_URL": (None, "The Label Studio project reviewers work in (`http://host:8080/projects/1`"
                                       "): `review_queue` links each image to it. Unset: the queue links the task file."),
    "VISION_ASSETS_QDRANT_URL": (None, "A Qdrant server. Unset = embedded Qdrant in `<data dir>/qdrant` "
                                 "(one machine, one process at a time)."),
    "VISION_ASSETS_QDRANT_API_KEY": (None, "API key for the Qdrant server."),
    "VISION_ASSETS_QDRANT_COLLECTION_PREFIX": ("", "Prefix for the `images` and `crops` collections (a new prefix "
                                               "per embedding model keeps vector spaces apart)."),
    "VISION_ASSETS_NEAR_DUPLICATE_DISTANCE": ("2", "pHash bits two images may differ by and still be near-exact "
                                              "copies in the catalogue (0 = identical pHash only)."),
    "VISION_ASSETS_CALLBACK_URL": (None, "Webhook that receives a signed JSON message for every finished image "
                                   "(indexed, rejected or failed). Unset = no callbacks."),
    "VISION_ASSETS_CALLBACK_SECRET": (None, "HMAC-SHA256 key for the `X-Vision-Assets-Signature` header."),
    "VISION_ASSETS_CALLBACK_ALLOW_PRIVATE": ("0", "`1` allows receivers on loopback or private addresses "
                                             "(refused by default)."),
    "VISION_ASSETS_CALLBACK_BACKOFF_SECONDS": ("30", "First retry delay; doubles per failed attempt, at most an hour."),
}

SPECIALIST_SETTINGS = {
    "dog_breeds": "VISION_ASSETS_DOG_BREEDS_MODEL",
    "cat_breeds": "VISION_ASSETS_CAT_BREEDS_MODEL",
    "wildlife": "VISION_ASSETS_WILDLIFE_MODEL",
    "coral_health": "VISION_ASSETS_CORAL_HEALTH_MODEL",
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


def _float(name: str, fallback: object = None) -> float:
    value = os.environ.get(name) or fallback or env(name)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def _pairs(name: str) -> dict[str, float]:
    pairs = {}
    for item in filter(None, (p.strip() for p in (env(name) or "").split(","))):
        key, separator, value = item.partition("=")
        try:
            pairs[key.strip()] = float(value)
        except ValueError:
            separator = ""
        if not separator:
            raise ValueError(f"{name}: expected `name=number`, got {item!r}")
    return pairs


def _flag(name: str) -> bool:
    return (env(name) or "").strip().lower() in ("1", "true", "yes", "on")


def _csv(name: str) -> frozenset[str]:
    return frozenset(part.strip() for part in (env(name) or "").split(",") if part.strip())


def _scenes(coral_expert: bool) -> dict[str, str]:
    scenes = parse_scenes(env("VISION_ASSETS_SCENE_TAGS") or "")
    gate = env("VISION_ASSETS_CORAL_SCENE_TAG")
    if not scenes:
        raise ValueError("VISION_ASSETS_SCENE_TAGS is empty: name at least one scene (and the coral gate's tag)")
    if coral_expert and gate not in scenes:
        raise ValueError(f"VISION_ASSETS_CORAL_SCENE_TAG {gate!r} is not in VISION_ASSETS_SCENE_TAGS "
                         f"({', '.join(scenes)}): add it, e.g. `{gate}=an underwater photo of a coral reef`")
    return scenes


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    s3_bucket: str | None
    s3_endpoint_url: str | None
    s3_region: str | None
    s3_events_queue: str | None
    s3_reconcile_seconds: int
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
    working_image_side: int
    store_retries: int
    store_retry_seconds: int
    run_retries: int
    failed_image_retries: int
    failed_image_retry_seconds: int
    max_concurrent_runs: int
    chunk_size: int
    qdrant_lock_wait_seconds: float
    qdrant_hnsw_threshold: int
    offline_models: Path | None
    model_cache: str
    device: str
    precision: str
    detector_model: str
    detector_confidence: float
    detector_max_detections: int
    detector_image_size: int
    detector_batch_size: int
    clip_model: str
    clip_pretrained: str
    clip_batch_size: int
    specialist_models: dict[str, str]
    specialist_batch_size: int
    specialist_top_k: int
    drop_labels: list[str]
    review_threshold: float
    review_thresholds: dict[str, float]
    routes: dict[str, str]
    crop_margin: float
    scenes: dict[str, str]
    scene_tag_threshold: float
    coral_scene_tag: str
    coral_scene_threshold: float
    second_opinion_margin: float
    review_pictures: bool
    review_picture_side: int
    review_tasks: bool
    review_sample_rate: float
    review_target_precision: float
    label_studio_url: str | None
    qdrant_url: str | None
    qdrant_api_key: str | None
    qdrant_collection_prefix: str
    near_duplicate_distance: int
    callback_url: str | None
    callback_secret: str | None
    callback_allow_private: bool
    callback_backoff_seconds: float

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    @property
    def local_bucket_dir(self) -> Path:
        return self.data_dir / "bucket"

    @classmethod
    def from_env(cls) -> Settings:
        from .vision.models.offline import read_manifest

        extensions = _csv("VISION_ASSETS_IMAGE_EXTENSIONS")
        offline_dir = env("VISION_ASSETS_OFFLINE_MODELS")
        offline = read_manifest(offline_dir) if offline_dir else {}
        detector = offline.get("detector", {})

        def model(name: str, offline_value: str | None) -> str:  # explicit setting (even empty) > offline > default
            if name in os.environ:
                return os.environ[name]
            return offline_value if offline_value is not None else env(name) or ""

        specialist_models = {
            name: path
            for name, setting in SPECIALIST_SETTINGS.items()
            if (path := model(setting, offline.get("specialists", {}).get(name)))
        }
        return cls(
            data_dir=Path(env("VISION_ASSETS_DATA_DIR")).expanduser().resolve(),
            s3_bucket=env("VISION_ASSETS_S3_BUCKET") or None,
            s3_endpoint_url=env("VISION_ASSETS_S3_ENDPOINT_URL") or None,
            s3_region=env("VISION_ASSETS_S3_REGION") or None,
            s3_events_queue=env("VISION_ASSETS_S3_EVENTS_QUEUE") or None,
            s3_reconcile_seconds=_int("VISION_ASSETS_S3_RECONCILE_SECONDS"),
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
            working_image_side=_int("VISION_ASSETS_WORKING_IMAGE_SIDE"),
            store_retries=_int("VISION_ASSETS_STORE_RETRIES"),
            store_retry_seconds=_int("VISION_ASSETS_STORE_RETRY_SECONDS"),
            run_retries=_int("VISION_ASSETS_RUN_RETRIES"),
            failed_image_retries=_int("VISION_ASSETS_FAILED_IMAGE_RETRIES"),
            failed_image_retry_seconds=_int("VISION_ASSETS_FAILED_IMAGE_RETRY_SECONDS"),
            max_concurrent_runs=_int("VISION_ASSETS_MAX_CONCURRENT_RUNS"),
            chunk_size=_int("VISION_ASSETS_CHUNK_SIZE"),
            qdrant_lock_wait_seconds=_float("VISION_ASSETS_QDRANT_LOCK_WAIT_SECONDS"),
            qdrant_hnsw_threshold=_int("VISION_ASSETS_QDRANT_HNSW_THRESHOLD"),
            offline_models=Path(offline_dir).resolve() if offline_dir else None,
            model_cache=model("VISION_ASSETS_MODEL_CACHE", offline.get("model_cache")),
            device=env("VISION_ASSETS_DEVICE"),
            precision=env("VISION_ASSETS_PRECISION"),
            detector_model=model("VISION_ASSETS_DETECTOR_MODEL", detector.get("model")),
            detector_confidence=_float("VISION_ASSETS_DETECTOR_CONFIDENCE", detector.get("confidence")),
            detector_max_detections=int(_float("VISION_ASSETS_DETECTOR_MAX_DETECTIONS", detector.get("max_detections"))),
            detector_image_size=_int("VISION_ASSETS_DETECTOR_IMAGE_SIZE"),
            detector_batch_size=_int("VISION_ASSETS_DETECTOR_BATCH_SIZE"),
            clip_model=model("VISION_ASSETS_CLIP_MODEL", offline.get("clip", {}).get("model")),
            clip_pretrained=model("VISION_ASSETS_CLIP_PRETRAINED", offline.get("clip", {}).get("pretrained")),
            clip_batch_size=_int("VISION_ASSETS_CLIP_BATCH_SIZE"),
            specialist_models=specialist_models,
            specialist_batch_size=_int("VISION_ASSETS_SPECIALIST_BATCH_SIZE"),
            specialist_top_k=_int("VISION_ASSETS_SPECIALIST_TOP_K"),
            drop_labels=sorted(_csv("VISION_ASSETS_DROP_LABELS") | set(offline.get("drop_labels", []))),
            review_threshold=_float("VISION_ASSETS_REVIEW_THRESHOLD"),
            review_thresholds=_pairs("VISION_ASSETS_REVIEW_THRESHOLDS"),
            routes=parse_routes(env("VISION_ASSETS_ROUTES")),
            crop_margin=_float("VISION_ASSETS_CROP_MARGIN"),
            scenes=_scenes(coral_expert=CORAL in specialist_models),
            scene_tag_threshold=_float("VISION_ASSETS_SCENE_TAG_THRESHOLD"),
            coral_scene_tag=env("VISION_ASSETS_CORAL_SCENE_TAG"),
            coral_scene_threshold=_float("VISION_ASSETS_CORAL_SCENE_THRESHOLD"),
            second_opinion_margin=_float("VISION_ASSETS_SECOND_OPINION_MARGIN"),
            review_pictures=_flag("VISION_ASSETS_REVIEW_PICTURES"),
            review_picture_side=_int("VISION_ASSETS_REVIEW_PICTURE_SIDE"),
            review_tasks=_flag("VISION_ASSETS_REVIEW_TASKS"),
            review_sample_rate=_float("VISION_ASSETS_REVIEW_SAMPLE_RATE"),
            review_target_precision=_float("VISION_ASSETS_REVIEW_TARGET_PRECISION"),
            label_studio_url=env("VISION_ASSETS_LABEL_STUDIO_URL") or None,
            qdrant_url=env("VISION_ASSETS_QDRANT_URL") or None,
            qdrant_api_key=env("VISION_ASSETS_QDRANT_API_KEY") or None,
            qdrant_collection_prefix=env("VISION_ASSETS_QDRANT_COLLECTION_PREFIX"),
            near_duplicate_distance=_int("VISION_ASSETS_NEAR_DUPLICATE_DISTANCE"),
            callback_url=env("VISION_ASSETS_CALLBACK_URL") or None,
            callback_secret=env("VISION_ASSETS_CALLBACK_SECRET") or None,
            callback_allow_private=_flag("VISION_ASSETS_CALLBACK_ALLOW_PRIVATE"),
            callback_backoff_seconds=_float("VISION_ASSETS_CALLBACK_BACKOFF_SECONDS"),
        )
