"""Which objects in a bucket need processing this tick, without missing one or taking one twice.

Two questions, answered by two sources of truth:
- *Is this object new?* Exactly when its partition key is not registered yet. The registered partitions (the
  Dagster instance's dynamic partitions) are the memory, not a timestamp, so nothing is missed however late
  an object becomes visible: uploads in the same second as the last tick, multipart uploads whose
  LastModified is their *start*, listings that lag, restarts.
- *Is this registered object a new version?* Its (key, etag) was not seen before. The cursor remembers the
  fingerprints of objects modified within `lookback` of the newest one processed; anything modified before that
  window counts as processed. A re-upload whose LastModified lands before the window (an upload slower than
  `lookback`) is the one case this cannot see; `lookback` is a setting for that reason.

The cursor is bounded: Dagster stores it with every tick that launches runs, so a burst of 50,000 uploads must not
leave megabytes in each. Past `MAX_RECENT` fingerprints the oldest seconds of the window are dropped and a `floor`
remembers that everything modified up to then is processed: during such a burst, a re-upload whose LastModified
lands at or before the floor goes unseen (as one older than `lookback` always does).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from pydantic import BaseModel, Field

from .cursor import Cursor
from .listing_pass import ListingPass
from .records import StoredObject
from .storage.results_store import is_pipeline_file

MAX_RECENT = 10_000  # fingerprints in the cursor: about 40 bytes each


class Migration(BaseModel):
    started_at: datetime
    legacy_images: int  # images registered one partition each, in registration order: the first n of `images`
    moved: int = 0  # of those, how many are in batches now
    batches: int = 0  # batches made so far (their numbers in the keys)

    @property
    def done(self) -> bool:
        return self.moved >= self.legacy_images


class UploadCursor(Cursor):
    watermark: datetime | None = None
    # fingerprint(key, etag) -> LastModified as epoch seconds, for objects modified within lookback of watermark
    recent: dict[str, float] = Field(default_factory=dict)
    floor: float | None = None  # epoch seconds: objects modified at or before it count as processed
    # Event mode (vision/storage/s3_events.py): the queue messages this tick took, deleted by the next tick (once
    # this cursor is stored, its partitions and runs are), and when the bucket was last listed in full.
    acknowledge: list[str] = Field(default_factory=list)
    listed_at: float | None = None  # when the latest listing pass began
    # The listing pass in progress (vision/listing_pass.py): one slice of the bucket per tick. With an events
    # queue, a pass begins every `reconcile_seconds`; without one, as soon as the last one ends.
    listing: ListingPass | None = None
    passes: int = 0  # listing passes begun
    last_pass_keys: int | None = None  # keys the last complete pass listed: the next one's progress is out of it
    # The move from one partition per image to upload batches (sensors/batch_migration.py): None until the first
    # tick has looked; then how many of the images registered before it have been put in batches, of how many.
    migration: Migration | None = None
    # The tick that stored this cursor wrote down its batch keys first (vision/storage/tick_ledger.py): the next
    # tick, seeing this cursor, knows that tick was stored and removes the file.
    decided_tick: str | None = None
    swept_at: float | None = None  # when the last look for empty batches left by earlier versions was
    slugged_kept: bool = False  # the slugged ids are in `slugged_images` (sensors/image_registry.py)

    def seen(self, obj: StoredObject) -> bool:
        """Processed already (the cursor is not fresh, and the object's key is registered)."""
        if self.floor is not None and obj.last_modified.timestamp() <= self.floor:
            return True
        return fingerprint(obj) in self.recent


def fingerprint(obj: StoredObject) -> str:
    return hashlib.sha1(f"{obj.key}\0{obj.etag}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


class Skip(str, Enum):
    """Why a listed object is not an upload; every one is counted, by the first reason that applies."""

    UNREPRESENTABLE = "names that are not valid UTF-8 (rename them)"
    OUTSIDE_PREFIX = "outside the upload prefix"
    FOLDER = "folder markers"
    RESULTS = "under the results prefix (never uploads: move them out)"
    HIDDEN = "hidden (name starts with a dot)"
    EXTENSION = "not an image extension"
    UNSETTLED = "still being written"


def is_representable(key: str) -> bool:
    """A key Python got from a non-UTF-8 file name carries surrogate escapes: no JSON, URI or Dagster key holds it."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(key: str) -> str:
    """A key as a log line can carry it: undecodable bytes and control characters escaped."""
    if not is_representable(key):
        return repr(key.encode("utf-8", "surrogateescape"))  # the raw bytes of the name
    return key if key.isprintable() else ascii(key)


@dataclass(frozen=True)
class UploadFilter:
    """Which keys in the store are uploads: under `prefix`, outside the results prefix, with an image extension."""

    prefix: str = ""
    results_prefix: str = ""
    extensions: frozenset[str] = frozenset()  # lower-case, with the dot; empty = any

    def is_ours(self, key: str) -> bool:
        """Results the pipeline wrote itself (the names it writes, and `.tmp-` files: its writes in progress):
        skipped without a word. Any other file under the results prefix, `~` in its name or not, is counted."""
        if not (self.results_prefix and key.startswith(self.results_prefix)):
            return False
        return is_pipeline_file(key[len(self.results_prefix):])

    def skip_reason(self, key: str) -> Skip | None:
        """None: an upload."""
        if not is_representable(key):
            return Skip.UNREPRESENTABLE
        if not key.startswith(self.prefix):
            return Skip.OUTSIDE_PREFIX
        if key.endswith("/"):
            return Skip.FOLDER
        if self.results_prefix and key.startswith(self.results_prefix):
            return Skip.RESULTS
        name = key.rsplit("/", 1)[-1]
        if name.startswith("."):  # hidden and temporary files (.tmp-*, .DS_Store, ...jpg)
            return Skip.HIDDEN
        # Trailing spaces are part of the key, not of the extension: `photo.jpg ` is a JPEG someone misnamed.
        if self.extensions and not any(name.rstrip().lower().endswith(ext) for ext in self.extensions):
            return Skip.EXTENSION
        return None

    def accepts(self, key: str) -> bool:
        return self.skip_reason(key) is None

    def relative(self, key: str) -> str:
        return key[len(self.prefix):]


@dataclass(frozen=True)
class Upload:
    partition_key: str
    obj: StoredObject
    is_new: bool


@dataclass
class TickPlan:
    uploads: list[Upload]
    cursor: UploadCursor
    skipped: Counter = field(default_factory=Counter)  # Skip -> how many objects
    skipped_examples: dict[Skip, list[str]] = field(default_factory=dict)  # a few keys per reason, as `shown`
    conflicts: list[str] = field(default_factory=list)
    present: set[str] = field(default_factory=set)  # partition keys of every upload listed, processed or not
    waiting: list[str] = field(default_factory=list)  # object keys left for a later tick (unsettled, over the cap)

    @property
    def new_partition_keys(self) -> list[str]:
        return [u.partition_key for u in self.uploads if u.is_new]

    def skip(self, reason: Skip, key: str) -> None:
        self.skipped[reason] += 1
        examples = self.skipped_examples.setdefault(reason, [])
        if len(examples) < 3:
            examples.append(shown(key))


def plan_tick(
    objects: Iterable[StoredObject],
    registered: set[str],
    cursor: UploadCursor,
    *,
    materialized: Callable[[], set[str]],
    upload_filter: UploadFilter,
    partition_key_of: Callable[[str], str],
    lookback: timedelta,
    max_uploads: int,
    settled_before: datetime | None = None,
    fresh: bool | None = None,
    slice_of_listing: bool = False,
) -> TickPlan:
    """Choose this tick's uploads, oldest first (a listing slice's: in key order), at most `max_uploads`; the rest
    wait for the next tick.

    `materialized`: the partitions already materialized; only asked for when the cursor is fresh.
    `settled_before`: objects modified after it are left for a later tick (a local folder has no atomic upload,
    so a file still being copied must not be read).
    `fresh`: treat the cursor as fresh (default: when it has no watermark yet); a listing pass that began with a
    fresh cursor stays fresh to its end, since each of its slices sees a different part of the bucket.
    `slice_of_listing`: the objects are a slice of a listing pass, whose next slice starts just before the first key
    that waits (`listing_pass.resume_after`). The uploads are then taken in key order, and none after a file still
    being written: what this tick takes is a prefix of the slice, and the next slice lists none of it again. (Taken
    oldest first, a capped slice left keys among the ones it took, the next slice listed those again, and a fresh
    pass, none of them materialized yet, requested them a second time.)
    """
    fresh_cursor = cursor.watermark is None if fresh is None else fresh
    done = materialized() if fresh_cursor else set()
    window_start = cursor.watermark - lookback if cursor.watermark else None
    candidates: list[Upload] = []
    already_processed: list[StoredObject] = []
    plan = TickPlan(uploads=[], cursor=cursor)
    claimed: set[str] = set()
    unsettled: list[str] = []
    objects = list(objects)

    for obj in objects:
        if upload_filter.is_ours(obj.key):
            continue
        reason = upload_filter.skip_reason(obj.key)
        if reason is not None:
            plan.skip(reason, obj.key)
            continue
        partition_key = partition_key_of(upload_filter.relative(obj.key))
        plan.present.add(partition_key)
        if settled_before is not None and obj.last_modified > settled_before:
            plan.skip(Skip.UNSETTLED, obj.key)
            plan.waiting.append(obj.key)
            unsettled.append(obj.key)
            continue
        if partition_key in claimed:  # only on a hash collision; reported, never fatal to the tick
            plan.conflicts.append(obj.key)
            continue
        claimed.add(partition_key)
        if partition_key not in registered:
            candidates.append(Upload(partition_key, obj, is_new=True))
        elif fresh_cursor:
            if partition_key in done:
                already_processed.append(obj)
            else:
                candidates.append(Upload(partition_key, obj, is_new=False))
        elif window_start is None or (obj.last_modified >= window_start and not cursor.seen(obj)):
            candidates.append(Upload(partition_key, obj, is_new=False))

    if slice_of_listing:
        candidates.sort(key=lambda u: u.obj.key)
        first_unsettled = min(unsettled, default=None)
        # Unless the slice begins with it (the slice then moves on, and the file waits for the next pass).
        if first_unsettled is not None and any(obj.key < first_unsettled for obj in objects):
            plan.waiting += [u.obj.key for u in candidates if u.obj.key > first_unsettled]
            candidates = [u for u in candidates if u.obj.key < first_unsettled]
    else:
        candidates.sort(key=lambda u: (u.obj.last_modified, u.obj.key))
    plan.uploads = candidates[:max_uploads]
    plan.waiting += [u.obj.key for u in candidates[max_uploads:]]
    plan.cursor = _advance(cursor, [u.obj for u in plan.uploads] + already_processed, lookback)
    return plan


def _advance(cursor: UploadCursor, processed: list[StoredObject], lookback: timedelta) -> UploadCursor:
    if not processed:
        return cursor
    newest = max(o.last_modified for o in processed)
    watermark = max(newest, cursor.watermark) if cursor.watermark else newest
    recent = dict(cursor.recent) | {fingerprint(o): o.last_modified.timestamp() for o in processed}
    horizon = (watermark - lookback).timestamp()
    recent = {fp: ts for fp, ts in recent.items() if ts >= horizon}
    floor = cursor.floor if cursor.floor is not None and cursor.floor >= horizon else None
    if len(recent) > MAX_RECENT:
        floor = max(_floor_keeping(recent, MAX_RECENT), floor or horizon)
        recent = {fp: ts for fp, ts in recent.items() if ts > floor}
    return cursor.model_copy(update={"watermark": watermark, "recent": recent, "floor": floor})


def _floor_keeping(recent: dict[str, float], limit: int) -> float:
    """The newest instant whose dropping, with everything older, leaves at most `limit` fingerprints (objects
    sharing a LastModified are kept or dropped together)."""
    per_instant = Counter(recent.values())
    kept = 0
    for instant in sorted(per_instant, reverse=True):
        if kept + per_instant[instant] > limit:
            return instant
        kept += per_instant[instant]
    raise ValueError(f"at most {limit} fingerprints: nothing to drop")


def contiguous_batches(ordered_keys: Sequence[str], selected: Iterable[str], max_size: int) -> list[list[str]]:
    """Split `selected` into runs of keys that are adjacent in `ordered_keys` (the partitions' insertion order),
    each at most `max_size` long. A range run covers exactly the keys between its ends, so only adjacent keys
    may share one."""
    position = {key: index for index, key in enumerate(ordered_keys)}
    indices = sorted({position[key] for key in selected})
    batches: list[list[str]] = []
    for index in indices:
        if batches and index == position[batches[-1][-1]] + 1 and len(batches[-1]) < max_size:
            batches[-1].append(ordered_keys[index])
        else:
            batches.append([ordered_keys[index]])
    return batches
