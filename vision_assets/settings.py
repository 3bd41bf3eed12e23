"""Every setting, declared once: its environment variable (the field's name, upper-cased, after `VISION_ASSETS_`),
type, default and meaning. `docs/configuration.md`'s table is generated from these declarations
(`uv run python -m vision_assets.settings --write`; a test fails when the two differ), and the resources take their
defaults from `DEFAULTS`, so a default is written in one place. Secrets reach resources as `dg.EnvVar` so the UI
never shows them (see `wiring.py`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .vision.committee.routing import DEFAULT_ROUTES, format_routes, parse_routes
from .vision.committee.scenes import CORAL_TAG, DEFAULT_SCENES, format_scenes, parse_scenes
from .vision.images.formats import DEFAULT_ALLOWED_FORMATS
from .vision.index.server_layout import ServerLayout
from .vision.models import defaults

PREFIX = "VISION_ASSETS_"
# `.hif`: the HEIF files Canon and Sony cameras write.
DEFAULT_EXTENSIONS = ".jpg,.jpeg,.png,.gif,.webp,.bmp,.tif,.tiff,.jp2,.j2k,.avif,.heic,.heif,.hif"
SPECIALISTS = ("dog_breeds", "cat_breeds", "wildlife", "coral_health")  # each has a `<name>_model` setting


def _unset_when_empty(value: Any) -> Any:
    return None if value == "" else value


def _comma_separated(value: Any) -> Any:
    if isinstance(value, str):
        return frozenset(part.strip() for part in value.split(",") if part.strip())
    return value


def _parsed_with(parse):
    return lambda value: parse(value) if isinstance(value, str) else value


def _thresholds(text: str) -> dict[str, float]:
    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, separator, value = item.partition("=")
        try:
            pairs[key.strip()] = float(value)
        except ValueError:
            separator = ""
        if not separator:
            raise ValueError(f"expected `name=number`, got {item!r}")
    return pairs


# Text forms: settings arrive as strings, a comma-separated list or `key=value` pairs rather than JSON.
OptionalText = Annotated[str | None, BeforeValidator(_unset_when_empty)]
CommaSeparated = Annotated[frozenset[str], NoDecode, BeforeValidator(_comma_separated)]
Routes = Annotated[dict[str, str], NoDecode, BeforeValidator(_parsed_with(parse_routes))]
Scenes = Annotated[dict[str, str], NoDecode, BeforeValidator(_parsed_with(parse_scenes))]
Thresholds = Annotated[dict[str, float], NoDecode, BeforeValidator(_parsed_with(_thresholds))]


def setting(default: Any, meaning: str, shown: str | None = None) -> Any:
    """A setting's default (in the form it is written in the environment) and what it means; `shown` stands for a
    default too long for the docs table."""
    extra = {"shown": shown} if shown else None
    return Field(default, description=meaning, validate_default=True, json_schema_extra=extra)


def secret(meaning: str, variable: str | None = None) -> Any:
    """Never printed: kept out of the settings' repr; resources get it as `dg.EnvVar`."""
    alias = {"validation_alias": AliasChoices(variable)} if variable else {}
    return Field(None, description=meaning, repr=False, **alias)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore", populate_by_name=True)

    # Where things live
    data_dir: Path = setting(".vision-assets", "One folder for everything local: the bucket folder (with its "
                             "results) and the Dagster instance (DAGSTER_HOME).")
    s3_bucket: OptionalText = setting(None, "Watch this S3 bucket instead of the local folder `<data dir>/bucket`.")
    s3_endpoint_url: OptionalText = setting(None, "S3-compatible endpoint (MinIO, R2, a test server). Unset = AWS.")
    s3_region: OptionalText = setting(None, "Region of the bucket.")
    s3_attempts: int = setting(5, "Attempts per S3 or SQS request (botocore's adaptive retry mode: a slow-down or "
                               "5xx answer backs off and slows the client down) before the stage sees a fault.")
    s3_timeout_seconds: float = setting(2, "Connect and read timeout of an S3 or SQS request: a request that stalls "
                                        "longer is retried (the time between bytes, not the whole transfer).")
    s3_hedge_seconds: float = setting(0.5, "A small S3 request (a record, a HEAD, a DELETE, a GET up to its first "
                                      "byte) unanswered after this long, or after 4x the store's recent median answer "
                                      "if that is longer, is sent again alongside, and the first answer taken: one "
                                      "slow request no longer holds up a stage. 0 = off.")
    s3_events_queue: OptionalText = setting(None, "URL of an SQS queue that receives the bucket's S3 event notifications "
                                        "(`s3:ObjectCreated:*`): the upload sensor reads it instead of listing the "
                                        "bucket every tick. For buckets past about 10,000 objects.")
    s3_reconcile_seconds: int = setting(3600, "With an events queue: how often the sensor still lists the whole "
                                        "bucket, to catch missed events and deleted objects.")
    aws_access_key_id: OptionalText = secret("S3 credentials (or any other boto3 credential source: profile, instance "
                                         "role).", "AWS_ACCESS_KEY_ID")
    aws_secret_access_key: OptionalText = secret("S3 credentials, with `AWS_ACCESS_KEY_ID`.", "AWS_SECRET_ACCESS_KEY")
    prefix: str = setting("", "Only objects under this key prefix are uploads.")
    results_prefix: str = setting("vision-assets-results/", "Where results go, in the same bucket or folder. Never "
                                  "treated as uploads.")

    # What is an image
    image_extensions: CommaSeparated = setting(DEFAULT_EXTENSIONS, "Comma-separated extensions the sensor registers "
                                               "(`*` = every object). Others are counted in the sensor's log.")
    allowed_formats: CommaSeparated = setting(",".join(sorted(DEFAULT_ALLOWED_FORMATS)), "Formats accepted after "
                                              "sniffing the magic bytes (Pillow names).")
    max_image_bytes: int = setting(50 * 1024 * 1024, "Larger objects are rejected without download.")
    max_image_pixels: int = setting(120_000_000, "Larger images are rejected before decoding (decompression bombs).")
    min_image_side: int = setting(32, "Images with a shorter side (pixels) are rejected.")

    # How work is cut up and retried
    batch_size: int = setting(256, "Most images in one upload batch (a partition, and the run the sensor launches "
                              "for it).")
    max_uploads_per_tick: int = setting(20_000, "Most objects one sensor tick registers; the rest wait for the next "
                                        "tick.")
    list_keys_per_tick: int = setting(20_000, "Most keys one upload-sensor tick lists: a bigger bucket is listed in "
                                      "slices over several ticks (a pass), resumed where the last slice ended.")
    sensor_interval_seconds: int = setting(15, "How often the upload sensor looks at the bucket.")
    version_lookback_seconds: int = setting(900, "Re-uploads are detected when their LastModified is within this "
                                            "window of the newest processed upload.")
    settle_seconds: int = setting(2, "Local folder only: files modified more recently wait for the next tick (they "
                                  "may still be being copied).")
    ingest_threads: int = setting(8, "Images decoded concurrently within a run (each holds one image decoded: about "
                                  "50 MB for 12 MP); more are fetched and written at once, their round trips "
                                  "overlapping.")
    working_image_side: int = setting(4096, "Long side (pixels) of the normalised copy every model stage reads and "
                                      "every box is measured in; larger images are scaled down once, at ingest (the "
                                      "original stays in the bucket). 0 = full resolution.")
    store_patience_seconds: float = setting(600, "How long a stage waits out a store, Qdrant or model-service "
                                            "outage, retrying, before its run fails and is re-run (see "
                                            "`VISION_ASSETS_RUN_RETRIES`). A retry resumes: images the step already "
                                            "finished are not done again.")
    store_retry_seconds: float = setting(5, "Wait before a stage's first retry; it doubles each time, up to a "
                                         "minute.")
    run_retries: int = setting(2, "`vision-assets dev`: times Dagster re-executes a failed run from its failed step (a "
                               "killed run worker, a store outage longer than the stage retries). A bad image never "
                               "fails a run; a bug or a broken index fails it without retries.")
    failed_image_retries: int = setting(3, "Times the pipeline itself re-runs an image whose run failed for good "
                                        "(Dagster's run retries used up, or a failure they do not retry), from the "
                                        "stage that failed; then the sensor's log names it for a person.")
    failed_image_retry_seconds: float = setting(300, "Wait after such a failure before the first of those re-runs; "
                                                "it doubles for each further one.")
    max_concurrent_runs: int = setting(2, "`vision-assets dev`: runs in flight at once; the rest wait in Dagster's "
                                       "queue. The `gpu` pool gets as many slots: their model stages reach the model "
                                       "service together, which batches them.")
    chunk_size: int = setting(16, "Images a stage hands its models at once. It reads up to two more chunks ahead "
                              "(each picture decoded at the scale its models need), so at most three chunks are held "
                              "decoded: a run's memory follows this, not the batch size.")

    # The embedded index
    qdrant_lock_wait_seconds: float = setting(60, "Embedded Qdrant admits one process at a time: how long a run or a "
                                              "search waits for the other to finish before giving up (a run then "
                                              "retries).")
    qdrant_hnsw_threshold: int = setting(10_000, "Embedded Qdrant (Edge): once runs have left this many points outside "
                                         "the HNSW search graph, the `index_graph` sensor launches `build_index_graph`"
                                         ", which puts them in a segment of their own (about 5 s per 10,000 points on"
                                         " two cores); until then search reads them exactly (a few ms).")

    # Models
    offline_models: Path | None = setting(None, "A folder from `vision-assets models build-offline`: the model cache, "
                                          "the ids to load from it and the detector's offline thresholds come from it "
                                          "(explicit model settings still win).")
    model_cache: str = setting("", "A folder laid out as the libraries' caches (`huggingface/hub/models--org--name"
                               "/...`, `ultralytics/yolov8n.pt`): hub ids resolve there first (air-gapped machines), "
                               "downloads land there, and CLIP's prompt vectors are kept there. Empty = each "
                               "library's own cache.")
    device: str = setting("auto", "`auto` (CUDA when present), `cpu`, `cuda`, `cuda:1`, ...")
    precision: str = setting("auto", "`auto` (each model's measured choice: bf16 for CLIP and the experts where the "
                             "CPU or GPU computes in bf16, except the wildlife expert on a CPU; fp32 for the detector on "
                             "a CPU, fp16 on a GPU), or `fp32`, `bf16`, `fp16` (CUDA only) for every model.")
    detector_model: str = setting(defaults.DETECTOR_MODEL, "Router checkpoint: an ultralytics name (`yolov8m.pt` on a "
                                  "GPU) or a local path.")
    detector_confidence: float = setting(0.25, "Detections under this confidence are dropped.")
    detector_max_detections: int = setting(50, "Most objects kept per image.")
    detector_image_size: int = setting(640, "Inference size (pixels, long side).")
    detector_batch_size: int = setting(16, "Images per detector forward pass.")
    clip_model: str = setting(defaults.CLIP_ARCHITECTURE, "OpenCLIP architecture (with a pretrained tag), "
                              "`hf-hub:org/repo` or `local-dir:/path`.")
    clip_pretrained: str = setting(defaults.CLIP_PRETRAINED, "OpenCLIP pretrained tag or weights file.")
    clip_batch_size: int = setting(64, "Images or texts per CLIP forward pass.")
    dog_breeds_model: str = setting(defaults.DOG_MODEL, "Dog breed expert (transformers id or folder).")
    cat_breeds_model: str = setting(defaults.CAT_MODEL, "Cat breed expert.")
    wildlife_model: str = setting(defaults.WILDLIFE_MODEL, "Wildlife expert: BioCLIP over the Tree of Life (kingdom "
                                  "to species and common name; `hf-hub:imageomics/bioclip-2` also works), or any "
                                  "transformers image classifier, e.g. the iNat21 ViT-L/14 "
                                  f"`{defaults.INAT21_WILDLIFE_MODEL}` (non-commercial).")
    coral_health_model: str = setting(defaults.CORAL_MODEL, "Coral health expert (whole images gated by the CLIP reef "
                                      "score). Empty = no coral stage.")
    model_service_url: OptionalText = setting(None, "The model service (`vision-assets models serve`) the pipeline's "
                                              "runs and the search service ask for every model answer, e.g. "
                                              "`http://127.0.0.1:3002`: runs then import no model library and load "
                                              "nothing. `vision-assets dev` starts one and sets this, unless it is "
                                              "set. Unset elsewhere: each run loads the models in its own process.")
    model_service_port: int = setting(3002, "`vision-assets models serve` (and the one `dev` starts) listens on this "
                                      "port, on loopback unless `--host` says otherwise.")
    model_devices: str = setting("auto", "The model service's devices, one inference worker each: `auto` (every "
                                 "visible GPU, else the CPU), `cpu`, or `cuda:0,cuda:1`.")
    model_workers_per_device: int = setting(1, "Inference workers per device (each holds its own copy of the "
                                            "models it is asked for).")
    model_max_batch: int = setting(8, "The model service batches up to this many requests (each up to 16 pictures) "
                                   "from concurrent runs into one model call.")
    model_max_wait_ms: float = setting(10, "How long the model service waits for more requests to fill a batch.")
    run_gpus: int = setting(0, "Kubernetes with the models in the runs (no model service): GPUs each `process_images` "
                            "run pod asks for, on a GPU node (the `dagster-k8s/config` run tag). 0 = none: with the "
                            "model service, run pods need no GPU.")
    model_service_patience_seconds: float = setting(120, "How long a run waits out an unreachable model service "
                                                    "(restarting, a worker that died) before its step fails and is "
                                                    "retried like a store outage.")
    specialist_batch_size: int = setting(32, "Crops per expert forward pass.")
    specialist_top_k: int = setting(3, "Labels kept per crop, best first.")
    drop_labels: CommaSeparated = setting("test", "Comma-separated junk classes never reported (some published "
                                          "models carry a stray `test` class).")

    # The committee's judgement
    review_threshold: float = setting(0.5, "A top label under this confidence is flagged `needs_review`.")
    review_thresholds: Thresholds = setting("", "Per-expert overrides: `dog_breeds=0.6,coral_health=0.7`.")
    routes: Routes = setting(format_routes(DEFAULT_ROUTES), "Detector class -> expert.")
    crop_margin: float = setting(0.1, "Crops grow by this fraction of the box on each side.")
    scene_tags: Scenes = setting(format_scenes(DEFAULT_SCENES), "Scene vocabulary for whole images: `tag` or "
                                 "`tag=CLIP prompt`, comma-separated. Each image gets the tags CLIP gives at least "
                                 "`VISION_ASSETS_SCENE_TAG_THRESHOLD` (payload `scene_tags`, search `--scene`).",
                                 shown="11 tags (below)")
    scene_tag_threshold: float = setting(0.2, "Zero-shot probability (among the vocabulary) a scene tag needs.")
    coral_scene_tag: str = setting(CORAL_TAG, "The scene tag that gates the coral expert (must be in the vocabulary).")
    coral_scene_threshold: float = setting(0.5, "Probability of that tag above which the coral expert sees the image.")
    second_opinion_margin: float = setting(0.5, "CLIP audits every crop: when its zero-shot answer beats the "
                                           "detector's class or the expert's label by this much probability, the crop "
                                           "is flagged for review (`committee_agrees` check). Above 1 = never.")
    referee: Literal["auto", "on", "off"] = setting(
        "auto", "The referee (a small vision-language model in the model service) settles doubtful crops before a "
        "person: `auto` = on where the models run on a GPU, off on a CPU (it costs seconds a crop there); `on`; `off`.")
    referee_model: str = setting(defaults.REFEREE_MODEL, "The referee: a transformers image-text-to-text model (hub "
                                 "id or folder) that needs no remote code; `Qwen/Qwen3-VL-2B-Instruct` also works.")
    referee_min_probability: float = setting(0.6, "The referee settles a crop when its answer has at least this "
                                             "probability among the allowed ones (and the margin below).")
    referee_margin: float = setting(0.2, "... and is ahead of its next answer by at least this much probability.")
    referee_max_crops_per_batch: int = setting(256, "At most this many doubtful crops per upload batch go to the "
                                               "referee, the most doubtful first; the rest wait for people.")
    referee_batch_size: int = setting(16, "Crops per referee forward pass.")
    captions: Literal["auto", "on", "off"] = setting(
        "auto", "A short caption per image from the referee's model, in the index and on the search page; text "
        "search also finds the words of captions. `auto` = on where the models run on a GPU, off on a CPU.")

    # Review
    review_pictures: bool = setting(True, "`1`: thumbnails with boxes and labels in each image's metadata, the crops "
                                    "that need review and previews of rejected files in the check results. `0`: words "
                                    "only (a smaller event log).")
    review_picture_side: int = setting(320, "Long side of those thumbnails, pixels.")
    review_tasks: bool = setting(True, "`1`: every image that needs review (an expert under its threshold, CLIP "
                                 "disagreeing) gets a Label Studio task, `<results prefix>~review/tasks/<image>.json`. "
                                 "`0`: none.")
    review_sample_rate: float = setting(0.02, "Share of the images that need no review sent for review anyway (chosen "
                                        "by a hash of the image id, so the same ones every time): without them the "
                                        "measured accuracy only knows doubtful labels.")
    review_target_precision: float = setting(0.95, "Precision the trusted labels (those at or above a review "
                                             "threshold) should reach: `review_accuracy` suggests the lowest threshold "
                                             "per expert that reaches it on the reviewed examples.")
    label_studio_url: OptionalText = setting(None, "The Label Studio project reviewers work in (`http://host:8080/"
                                         "projects/1`): `review_queue` links each image to it. Unset: the queue links "
                                         "the task file.")

    # The index server, the catalogue, the callback
    qdrant_url: OptionalText = setting(None, "A Qdrant server. Unset = embedded Qdrant in `<data dir>/qdrant` (one "
                                   "machine, one process at a time).")
    qdrant_api_key: OptionalText = secret("API key for the Qdrant server.")
    qdrant_collection_prefix: str = setting("", "Prefix for the `images` and `crops` collections (a new prefix per "
                                            "embedding model keeps vector spaces apart).")
    # A Qdrant server's layout, sent when a collection is created (embedded Qdrant ignores these and says so once).
    qdrant_shards: Annotated[int | None, BeforeValidator(_unset_when_empty)] = setting(
        None, "Server only: shards per collection, fixed when it is created; unset = the server's default (one per "
        "node). Two per node leaves room to add nodes.")
    qdrant_replication_factor: int = setting(2, "Server only: copies of each shard, so a cluster survives losing a "
                                             "node (a single server keeps one).")
    qdrant_write_consistency_factor: int = setting(1, "Server only: replicas that must confirm a write before it "
                                                   "counts.")
    qdrant_on_disk: bool = setting(True, "Server only: vectors and payloads on disk (the HNSW graph and the int8 "
                                   "copies stay in RAM).")
    qdrant_quantization: str = setting("int8", "Server only: `int8` keeps a scalar-quantized copy of every vector in "
                                       "RAM for queries (4x smaller, rescored from disk); `none` keeps none.")
    qdrant_read_consistency: str = setting("majority", "Server only: replicas a search's answer must agree between: "
                                           "`majority`, `quorum`, `all` or a number.")
    catalog_refresh_seconds: int = setting(60, "How often Dagster's declarative automation looks whether the "
                                           "catalogue (`image_catalog`: the table, the duplicate groups) is behind "
                                           "the batches' results; it is refreshed when it is, one refresh at a time.")
    catalog_full_listing_hours: float = setting(24, "A catalogue refresh reads only the images of the batches "
                                                "materialized since the last one; every this many hours one lists "
                                                "every record instead, to see what changed outside the pipeline's "
                                                "runs (review verdicts, files edited by hand). 0 = always list.")
    near_duplicate_distance: int = setting(2, "pHash bits two images may differ by and still be near-exact copies in "
                                           "the catalogue (0 = identical pHash only).")
    callback_url: OptionalText = setting(None, "Webhook that receives a signed JSON message for every finished image "
                                     "(indexed, rejected or failed). Unset = no callbacks.")
    callback_secret: OptionalText = secret("HMAC-SHA256 key for the `X-Vision-Assets-Signature` header.")
    callback_allow_private: bool = setting(False, "`1` allows receivers on loopback or private addresses (refused by "
                                           "default).")
    callback_backoff_seconds: float = setting(30, "First retry delay; doubles per failed attempt, at most an hour.")
    callback_max_attempts: int = setting(12, "Attempts before a message is given up on (about 5 hours with the "
                                         "default backoff): it goes to the dead letters, which the review queue "
                                         "and the search service show; `vision-assets callbacks resend` sends them "
                                         "again.")

    # The search service
    service_port: int = setting(3001, "`vision-assets serve` (and the one `vision-assets dev` starts) listens on "
                                "this port, on loopback unless `serve --host` says otherwise.")
    dagster_url: str = setting("http://127.0.0.1:3000", "Where people open the Dagster UI: the search page links each "
                               "image to its batch there (`vision-assets dev` sets it to the UI it starts).")
    service_api_key: OptionalText = secret("The search service's API key, required in the `X-API-Key` header of "
                                           "every request when set; `serve` refuses to listen beyond loopback "
                                           "without one.")

    @field_validator("data_dir", "offline_models")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return path.expanduser().resolve() if path else path

    @field_validator("image_extensions")
    @classmethod
    def _extensions(cls, extensions: frozenset[str]) -> frozenset[str]:
        return frozenset() if "*" in extensions else frozenset(e.lower() for e in extensions)

    @field_validator("allowed_formats")
    @classmethod
    def _formats(cls, formats: frozenset[str]) -> frozenset[str]:
        return frozenset(f.upper() for f in formats)

    @model_validator(mode="after")
    def _coral_gate_in_vocabulary(self) -> Settings:
        if not self.scene_tags:
            raise ValueError("VISION_ASSETS_SCENE_TAGS is empty: name at least one scene (and the coral gate's tag)")
        if self.coral_health_model and self.coral_scene_tag not in self.scene_tags:
            gate = self.coral_scene_tag
            raise ValueError(f"VISION_ASSETS_CORAL_SCENE_TAG {gate!r} is not in VISION_ASSETS_SCENE_TAGS "
                             f"({', '.join(self.scene_tags)}): add it, e.g. `{gate}=an underwater photo of a coral reef`")
        return self

    @model_validator(mode="after")
    def _run_gpus_only_without_a_service(self) -> Settings:
        if self.run_gpus and self.model_service_url:
            raise ValueError(f"VISION_ASSETS_RUN_GPUS={self.run_gpus} asks a GPU for every run pod, but the model "
                             f"service at {self.model_service_url} serves the models: run pods need none; set it to 0")
        return self

    @model_validator(mode="after")
    def _qdrant_layout_possible(self) -> Settings:
        _ = self.qdrant_layout  # a layout no server could take (more write confirmations than replicas) fails at start
        return self

    @property
    def qdrant_layout(self) -> ServerLayout:
        return ServerLayout(shards=self.qdrant_shards, replication_factor=self.qdrant_replication_factor,
                            write_consistency_factor=self.qdrant_write_consistency_factor, on_disk=self.qdrant_on_disk,
                            quantization=self.qdrant_quantization,  # type: ignore[arg-type]
                            read_consistency=self.qdrant_read_consistency)

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    @property
    def local_bucket_dir(self) -> Path:
        return self.data_dir / "bucket"

    @property
    def specialist_models(self) -> dict[str, str]:
        """The experts that are configured (an empty model setting turns one off)."""
        return {name: model for name in SPECIALISTS if (model := getattr(self, f"{name}_model"))}

    @classmethod
    def from_env(cls) -> Settings:
        """The environment's settings, then an offline-models folder's ids for every model setting left unset."""
        try:
            settings = cls()
            return settings.with_offline_models() if settings.offline_models else settings
        except ValidationError as error:
            raise ValueError(_explained(error)) from None

    def with_offline_models(self) -> Settings:
        from .vision.models.offline_manifest import read_manifest

        manifest = read_manifest(self.offline_models)
        detector, clip = manifest.get("detector", {}), manifest.get("clip", {})
        offered = {
            "model_cache": manifest.get("model_cache"),
            "detector_model": detector.get("model"),
            "detector_confidence": detector.get("confidence"),
            "detector_max_detections": detector.get("max_detections"),
            "clip_model": clip.get("model"),
            "clip_pretrained": clip.get("pretrained"),
            "referee_model": manifest.get("referee", {}).get("model"),
        } | {f"{name}_model": model for name, model in manifest.get("specialists", {}).items()}
        # An explicit setting, even an empty one, wins over the folder's.
        update = {name: value for name, value in offered.items()
                  if value is not None and name not in self.model_fields_set}
        update["drop_labels"] = self.drop_labels | set(manifest.get("drop_labels", []))
        return type(self).model_validate(self.model_dump() | update)


def variable(field_name: str) -> str:
    """The environment variable that sets a field."""
    alias = Settings.model_fields[field_name].validation_alias
    return alias.choices[0] if isinstance(alias, AliasChoices) else PREFIX + field_name.upper()


def _explained(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        name = variable(str(problem["loc"][0])) if problem["loc"] else "settings"
        message, given = problem["msg"].removeprefix("Value error, "), problem.get("input")
        got = f" (got {given!r})" if isinstance(given, str | int | float) and repr(given) not in message else ""
        lines.append(f"{name}: {message}{got}")
    return "; ".join(lines)


DEFAULTS = Settings.model_validate({})  # every default, parsed; the environment is not read


def _shown(field_name: str) -> str:
    field = Settings.model_fields[field_name]
    default = (field.json_schema_extra or {}).get("shown") or field.default
    if default is None or default == "":
        return "(unset)"
    if isinstance(default, bool):
        return f"`{int(default)}`"
    return default if field.json_schema_extra else f"`{default}`"


def table() -> str:
    """The configuration table of `docs/configuration.md`, from the declarations above."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{variable(name)}` | {_shown(name)} | {field.description} |")
    return "\n".join(rows) + "\n"


TABLE_START, TABLE_END = "<!-- settings table: generated -->\n", "<!-- end of settings table -->\n"


def document(page: str) -> str:
    """The page with its settings table replaced by the generated one."""
    before, start, rest = page.partition(TABLE_START)
    _, end, after = rest.partition(TABLE_END)
    if not (start and end):
        raise ValueError(f"the page has no `{TABLE_START.strip()}` ... `{TABLE_END.strip()}` section")
    return before + TABLE_START + table() + TABLE_END + after


if __name__ == "__main__":  # `python -m vision_assets.settings [--write]`: print or rewrite the docs table
    docs = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    if "--write" in sys.argv:
        docs.write_text(document(docs.read_text()))
    else:
        sys.stdout.write(table())
