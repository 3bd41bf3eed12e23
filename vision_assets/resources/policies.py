"""How much work a tick and a run take on, and what an acceptable image is. Resources, so the values are
visible in the Dagster UI and can be overridden per deployment."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import dagster as dg

from ..settings import DEFAULTS
from ..vision.committee.labeling import LabelingPolicy
from ..vision.images.review import ReviewPictures
from ..vision.images.validation import ValidationLimits
from ..vision.retry_budget import RetryBudget


class UploadPolicy(dg.ConfigurableResource):
    batch_size: int = DEFAULTS.batch_size
    max_uploads_per_tick: int = DEFAULTS.max_uploads_per_tick
    list_keys_per_tick: int = DEFAULTS.list_keys_per_tick  # one slice of a listing pass (vision/listing_pass.py)
    version_lookback_seconds: int = DEFAULTS.version_lookback_seconds

    @property
    def version_lookback(self) -> timedelta:
        return timedelta(seconds=self.version_lookback_seconds)


class IngestPolicy(dg.ConfigurableResource):
    max_bytes: int = DEFAULTS.max_image_bytes
    max_pixels: int = DEFAULTS.max_image_pixels
    min_side: int = DEFAULTS.min_image_side
    allowed_formats: list[str] = sorted(DEFAULTS.allowed_formats)
    threads: int = DEFAULTS.ingest_threads
    working_side: int = DEFAULTS.working_image_side  # long side of the normalised copy the model stages read; 0 = the original's
    model_input_side: int = DEFAULTS.detector_image_size  # long side of the model input written beside it; 0 = none

    @property
    def limits(self) -> ValidationLimits:
        return ValidationLimits(
            max_bytes=self.max_bytes,
            max_pixels=self.max_pixels,
            min_side=self.min_side,
            allowed_formats=frozenset(self.allowed_formats),
        )


MAX_RETRY_WAIT_SECONDS = 60.0
MAX_RETRIES = 1000  # a patience with no wait between retries (tests) still ends


class StagePolicy(dg.ConfigurableResource):
    """How every stage works through its batch: a chunk of images at a time (memory follows the chunk, not the
    batch), and what it does when the store or Qdrant cannot be reached (retries, waiting longer each time, for up
    to `patience_seconds`, then fails the run)."""

    chunk_size: int = DEFAULTS.chunk_size
    patience_seconds: float = DEFAULTS.store_patience_seconds
    first_retry_seconds: float = DEFAULTS.store_retry_seconds

    def wait_before_retry(self, retry_number: int) -> float:
        return min(self.first_retry_seconds * 2**retry_number, MAX_RETRY_WAIT_SECONDS)

    @property
    def retries(self) -> int:
        """As many retries as their waits fit in `patience_seconds`: the budget is time waited, so attempts that fail
        at once cannot use it up in seconds (5 s doubling to a minute: 12 retries in 10 minutes)."""
        waited, retries = 0.0, 0
        while retries < MAX_RETRIES and waited + self.wait_before_retry(retries) <= self.patience_seconds:
            waited += self.wait_before_retry(retries)
            retries += 1
        return retries


class FailedImageRetries(dg.ConfigurableResource):
    """What the pipeline does with images whose run failed for good: re-run them from the failed stage, waiting
    longer each time, at most `attempts` times (see vision/retry_budget.py)."""

    attempts: int = DEFAULTS.failed_image_retries
    first_wait_seconds: float = DEFAULTS.failed_image_retry_seconds

    @property
    def budget(self) -> RetryBudget:
        return RetryBudget(attempts=self.attempts, first_wait_seconds=self.first_wait_seconds)


class LabelingSettings(dg.ConfigurableResource):
    """How crops reach experts, what CLIP is asked about each image and crop, and when a label needs a human."""

    routes: dict[str, str] = DEFAULTS.routes
    review_thresholds: dict[str, float] = DEFAULTS.review_thresholds
    default_review_threshold: float = DEFAULTS.review_threshold
    crop_margin: float = DEFAULTS.crop_margin
    scenes: dict[str, str] = DEFAULTS.scene_tags  # scene tag -> CLIP prompt
    scene_tag_threshold: float = DEFAULTS.scene_tag_threshold
    coral_scene_tag: str = DEFAULTS.coral_scene_tag
    coral_scene_threshold: float = DEFAULTS.coral_scene_threshold
    second_opinion_margin: float = DEFAULTS.second_opinion_margin  # CLIP's lead that flags a crop for review

    @property
    def scene_signature(self) -> str:
        """What the scene tags depend on, for the code version of the stage that computes them."""
        import hashlib

        text = "|".join([f"{self.crop_margin}", f"{self.scene_tag_threshold}", *(f"{k}={v}" for k, v in self.scenes.items())])
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    @property
    def signature(self) -> str:
        """Everything here, for the versions of the results it shapes (vision/reuse.py)."""
        import hashlib

        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:8]

    @property
    def policy(self) -> LabelingPolicy:
        return LabelingPolicy(
            routes=self.routes,
            thresholds=self.review_thresholds,
            crop_margin=self.crop_margin,
            coral_scene_threshold=self.coral_scene_threshold,
            default_threshold=self.default_review_threshold,
        )


class ReviewSettings(dg.ConfigurableResource):
    """The pictures a reviewer sees in the UI (they travel in the event log, about 20-30 KB per image, so a
    deployment that never looks at them can turn them off), and the review loop: Label Studio tasks for the images
    that need a person, a confident sample besides, and the precision threshold suggestions aim for."""

    pictures: bool = DEFAULTS.review_pictures
    picture_side: int = DEFAULTS.review_picture_side  # long side of the thumbnails, pixels
    tasks: bool = DEFAULTS.review_tasks
    sample_rate: float = DEFAULTS.review_sample_rate
    target_precision: float = DEFAULTS.review_target_precision
    label_studio_url: str | None = DEFAULTS.label_studio_url  # the reviewers' project, linked from `review_queue`

    def sampled(self, partition_key: str) -> bool:
        """Whether a confident image goes to review anyway; a hash of its id, so the same images every time."""
        digest = hashlib.sha256(partition_key.encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.sample_rate

    @property
    def look(self) -> ReviewPictures | None:
        return ReviewPictures(side=self.picture_side) if self.pictures else None


class CatalogSettings(dg.ConfigurableResource):
    # pHash bits that may differ between "near-exact copies" (re-encoded, resized); 0 = identical pHash only.
    near_duplicate_distance: int = DEFAULTS.near_duplicate_distance
    # Hours between refreshes that list every record; the others follow the batches' materializations.
    full_listing_hours: float = DEFAULTS.catalog_full_listing_hours


class CallbackSettings(dg.ConfigurableResource):
    """Where finished images are announced. No URL: no messages are written or sent."""

    url: str | None = None
    secret: str | None = None
    allow_private: bool = DEFAULTS.callback_allow_private  # loopback / private-network receivers refused unless set
    timeout_seconds: float = 5.0
    base_backoff_seconds: float = DEFAULTS.callback_backoff_seconds
    max_attempts: int = DEFAULTS.callback_max_attempts  # then the message is a dead letter, for a person to resend
    max_per_tick: int = 200

    @property
    def enabled(self) -> bool:
        return bool(self.url)


class ImageSelection(dg.ConfigurableResource):
    """Which images of the run's batches to process: all of them (empty, the default), or exactly these image ids
    (`vision-assets reprocess KEY ...`, or in the UI's Launchpad: `resources: {image_selection: {config: {images:
    [...]}}}`). The batches' checks still judge every image of each batch, the others from their stored results."""

    images: list[str] = []

    @property
    def only(self) -> frozenset[str] | None:
        return frozenset(self.images) if self.images else None
