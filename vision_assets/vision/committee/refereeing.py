"""One run's work for the referee: which doubtful crops it is asked about within each batch's budget, asking it a
chunk of images at a time, and every crop's outcome kept in its image's `RefereeRecord`: an opinion, or why it was
not asked (over the budget, the referee off, down or failing). Plain Python: the `referee_opinions` stage drives it,
the tests can too."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from PIL import Image

from ..models.base import ModelLoadError
from ..models.device_time import DeviceTime
from ..models.remote import ModelFailedOnImage, ModelServiceUnavailable
from ..records import CropLabels, RefereeCrop, RefereeOpinion, RefereeRecord
from .referee import CropKey, Referee, RefereePolicy, judge_crops, within_budget

# The referee down or unable to load: not healed within the run, so the rest of the run's crops are left for people
# at once, instead of each chunk waiting out the model service's patience again.
REFEREE_DOWN = (ModelServiceUnavailable, ModelLoadError)

T = TypeVar("T")

Doubtful = list[tuple[str, CropLabels]]  # (image, crop)
CutCrops = Callable[[Mapping[str, list[CropLabels]]], dict[CropKey, Image.Image]]  # image -> crops -> their pixels
ReadPictures = Callable[[list[str]], dict[str, Image.Image]]  # images -> their pictures


@dataclass
class RefereeRun:
    model: str
    version: str
    policy: RefereePolicy
    off: str | None  # why the referee is not asked at all (None: it is)
    records: dict[str, RefereeRecord] = field(default_factory=dict)
    pictures: dict[CropKey, Image.Image] = field(default_factory=dict)  # the crops it was shown
    clock: DeviceTime = field(default_factory=DeviceTime)
    seconds: float = 0.0
    failures: int = 0  # crops of chunks the referee raised on
    down: str | None = None

    def record_of(self, image: str) -> RefereeRecord:
        return self.records.setdefault(image, RefereeRecord(partition_key=image, model=self.model,
                                                            version=self.version))

    def plan(self, doubtful_by_batch: Mapping[str, Doubtful]) -> Doubtful:
        """The crops to ask about: each batch's most doubtful, within its budget; the others are recorded as left
        for people, with why."""
        asked: Doubtful = []
        for crops in doubtful_by_batch.values():
            chosen, left = ([], crops) if self.off else within_budget(crops, self.policy.max_crops_per_batch)
            asked += chosen
            why = self.off or (f"over the batch's budget (VISION_ASSETS_REFEREE_MAX_CROPS_PER_BATCH="
                               f"{self.policy.max_crops_per_batch}); more doubtful crops went first")
            for image, crop in left:
                self.record_of(image).not_judged[crop.detection_index] = why
        return asked

    def ask(self, asked: Doubtful, referee: Callable[[], Referee], cut: CutCrops, images_per_chunk: int,
            warn: Callable[[str], None]) -> None:
        """Ask about these crops, `images_per_chunk` images at a time (`cut` gives a chunk's crops' pixels; `referee`
        gives the model, loading it): each crop ends with an opinion or a reason."""
        by_image: dict[str, list[CropLabels]] = defaultdict(list)
        for image, crop in asked:
            by_image[image].append(crop)
        images = list(by_image)
        for start in range(0, len(images), max(1, images_per_chunk)):
            chunk = {image: by_image[image] for image in images[start:start + images_per_chunk]}
            chunk_asked = [(image, crop) for image, crops in chunk.items() for crop in crops]
            if self.down is None:
                self._ask_chunk(chunk_asked, chunk, referee, cut, warn)
            if self.down is not None:
                for image, crop in chunk_asked:
                    self.record_of(image).not_judged[crop.detection_index] = self.down

    def _ask_chunk(self, chunk_asked: Doubtful, chunk: Mapping[str, list[CropLabels]],
                   referee: Callable[[], Referee], cut: CutCrops, warn: Callable[[str], None]) -> None:
        def judged() -> dict[CropKey, RefereeOpinion]:
            model = referee()
            pictures = cut(chunk)
            self.pictures |= pictures
            return self._timed(lambda: judge_crops(chunk_asked, pictures, model, self.model, self.policy, self.clock))

        def failed(error: ModelFailedOnImage) -> None:
            for image, crop in chunk_asked:
                self.record_of(image).not_judged[crop.detection_index] = f"the referee failed: {error}"

        opinions = self._guarded(judged, len(chunk_asked), "the doubtful crops of this run are left for people", warn,
                                 failed)
        for (image, index), opinion in (opinions or {}).items():
            record = self.record_of(image)
            record.crops.append(RefereeCrop(detection_index=index, opinion=opinion))
            record.device_seconds = self.clock.of(image)

    def _timed(self, call: Callable[[], T]) -> T:
        """`call`'s answer, its seconds added to the run's time in the referee."""
        started = time.perf_counter()
        try:
            return call()
        finally:
            self.seconds += time.perf_counter() - started

    def _guarded(self, work: Callable[[], T], items: int, left: str, warn: Callable[[str], None],
                 failed: Callable[[ModelFailedOnImage], None]) -> T | None:
        """`work`'s answer, or None: the referee down is remembered for the rest of the run and said once (`left`:
        what that leaves undone); the model failing on these `items` counts them and tells `failed`."""
        try:
            return work()
        except REFEREE_DOWN as error:
            self.down = f"referee unavailable: {error}"
            warn(f"{self.down}; {left}")
        except ModelFailedOnImage as error:
            self.failures += items
            failed(error)
        return None

    def caption(self, images: Sequence[str], referee: Callable[[], Referee], read: ReadPictures, images_per_chunk: int,
                warn: Callable[[str], None]) -> None:
        """A caption for each of these images (`read` gives a chunk's pictures), a chunk at a time; an image the
        model fails on, or all of them while it is down, simply has none (captions are not a verdict)."""
        for start in range(0, len(images), max(1, images_per_chunk)):
            if self.down is not None:
                return
            chunk = list(images[start:start + images_per_chunk])

            def captioned(chunk: list[str] = chunk) -> list[str]:
                model = referee()
                pictures = read(chunk)
                return self._timed(lambda: self.clock.timed("referee", model, chunk, model.caption,
                                                            [pictures[i] for i in chunk]))

            captions = self._guarded(captioned, len(chunk), "no captions for the rest of this run", warn,
                                     lambda error, n=len(chunk): warn(f"no captions for {n} image(s): {error}"))
            if captions is None:  # down (the next chunk stops) or failed on these images (the next goes on)
                continue
            for image, text in zip(chunk, captions, strict=True):
                record = self.record_of(image)
                record.caption = text
                record.device_seconds = self.clock.of(image)

    def by_batch(self, batches: Iterable[str], batch_of: Mapping[str, str], doubtful_by_batch: Mapping[str, Sequence],
                 ) -> dict[str, dict]:
        """Each of these batches: its doubtful crops, how many the referee judged and settled."""
        figures = {batch: {"doubtful_crops": len(doubtful_by_batch.get(batch, ())), "crops_refereed": 0,
                           "crops_settled": 0} for batch in batches}
        for image, record in self.records.items():
            figures[batch_of[image]]["crops_refereed"] += len(record.crops)
            figures[batch_of[image]]["crops_settled"] += sum(c.opinion.settled for c in record.crops)
        return figures
