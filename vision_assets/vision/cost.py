"""What a backfill will cost the models, from what recent batches cost: each batch's `qdrant_index` metadata says
every model's seconds on its images (vision/models/device_time.py); their rate per image, times the images to
process, is the estimate. Images whose bytes were processed before cost nothing, so recent batches with re-uploads
make the estimate low for a catalogue without them: the sample says how many it reused."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BatchCost:
    images: int  # the images the models worked on (the batch's indexed images)
    seconds: dict[str, float]  # model -> seconds


@dataclass(frozen=True)
class CostEstimate:
    sampled_batches: int
    sampled_images: int
    per_image: dict[str, float]  # model -> seconds per image
    images: int  # the images the estimate is for
    devices: int
    by_model: dict[str, float] = field(default_factory=dict)  # model -> seconds for those images

    @property
    def device_seconds(self) -> float:
        return sum(self.by_model.values())

    @property
    def wall_seconds(self) -> float:
        """Spread over the devices (the model service's workers share the work evenly)."""
        return self.device_seconds / max(1, self.devices)

    def describe(self) -> str:
        if not self.sampled_images:
            return "no batch has been indexed with its models' seconds yet: nothing to estimate from"
        lines = [f"from {self.sampled_batches} recent batch(es), {self.sampled_images} images: for {self.images} images",
                 "  model            s/image    device seconds"]
        for model, seconds in sorted(self.by_model.items(), key=lambda item: -item[1]):
            lines.append(f"  {model:<16} {self.per_image[model]:>8.4f} {seconds:>16,.0f}")
        lines.append(f"  total            {sum(self.per_image.values()):>8.4f} {self.device_seconds:>16,.0f}"
                     f"  = {_duration(self.wall_seconds)} on {self.devices} device(s)")
        return "\n".join(lines)


def estimate(samples: Iterable[BatchCost], images: int, devices: int = 1) -> CostEstimate:
    """The models' seconds for `images` images at the rate of the sampled batches."""
    samples = list(samples)
    seconds, sampled = Counter(), sum(sample.images for sample in samples)
    for sample in samples:
        seconds.update(sample.seconds)
    per_image = {model: value / sampled for model, value in seconds.items()} if sampled else {}
    return CostEstimate(len(samples), sampled, per_image, images, devices,
                        {model: rate * images for model, rate in per_image.items()})


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"
