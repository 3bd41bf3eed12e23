"""Pictures cut to the size a model reads before they go anywhere: the detector reads 640 px, CLIP and the experts
224-384 px, so a 4,000 px crop or photo is shrunk once, here, with Pillow's reducing decoder path, instead of being
resized by each library from full size (or sent whole to the model service). Local models and the service's clients
call the same functions, so a model sees the same pixels wherever it runs."""

from __future__ import annotations

from PIL import Image

from ..images.validation import size_within


def fit_within(image: Image.Image, side: int) -> tuple[Image.Image, tuple[float, float]]:
    """The image scaled down so its longer side is `side` (YOLO letterboxes to that anyway), and the factors that
    take a box back to the image's own pixels. ultralytics keeps a full-size BGR copy of every input, in its results
    and in the predictor until the next call: given a chunk of 12 MP working copies, that doubled the stage's
    memory (bench/memory_bench.py); given 640 px ones it is nothing, and the resize is Pillow's (antialiased)."""
    width, height = image.size
    if max(width, height) <= side:
        return image, (1.0, 1.0)
    shrunk = image.resize(size_within(image.size, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return shrunk, (width / shrunk.width, height / shrunk.height)


def shrink_to_cover(image: Image.Image, side: int) -> Image.Image:
    """The image scaled down so its shorter side is `side` (never up): what a classifier or CLIP resizes to
    `side` x `side` (or center-crops at `side`) loses nothing by it."""
    width, height = image.size
    if not side or min(width, height) <= side:
        return image
    scale = side / min(width, height)
    size = (max(side, round(width * scale)), max(side, round(height * scale)))
    # Box-reduced, then bilinear: antialiased, and half the CPU of bicubic; the model's own resize (bicubic) follows.
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def scaled_box(box: list[float], x_scale: float, y_scale: float) -> list[float]:
    x1, y1, x2, y2 = box
    return [round(x1 * x_scale, 2), round(y1 * y_scale, 2), round(x2 * x_scale, 2), round(y2 * y_scale, 2)]


def visual_side(model) -> int:
    """An OpenCLIP model's input side (its `visual.image_size`, an int or a pair)."""
    size = model.visual.image_size
    return int(max(size) if isinstance(size, tuple | list) else size)
