"""The working copy as a model stage reads it: decoded only as large as the stage's models need. A JPEG is decoded at
the smallest DCT scale (1/1, 1/2, 1/4, 1/8) that still gives every model its input side; for a 12 MP photo a
decode at 1/4 costs 0.4 of a full one, and no full-size resize follows. Boxes and sizes stay in the working copy's
own pixels (what the records hold), whatever scale the pixels were decoded at."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class WorkingPicture:
    image: Image.Image  # RGB, decoded at `scale` of the working copy's size
    width: int  # the working copy's size
    height: int

    @classmethod
    def whole(cls, image: Image.Image) -> WorkingPicture:
        return cls(image, image.width, image.height)

    @property
    def scale(self) -> float:
        return self.image.width / self.width

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def crop(self, box: Iterable[float]) -> Image.Image:
        """The region `box` (working-copy pixels) of the decoded picture."""
        scale = self.scale
        if scale == 1:
            return self.image.crop(tuple(box))
        x1, y1, x2, y2 = (v * scale for v in box)
        left, top = int(x1), int(y1)
        return self.image.crop((left, top, max(left + 1, round(x2)), max(top + 1, round(y2))))

    def to_working(self, box: list[float]) -> list[float]:
        """A box in decoded pixels as working-copy pixels."""
        return [round(v / self.scale, 2) for v in box] if self.scale != 1 else box


def as_working(picture: Image.Image | WorkingPicture) -> WorkingPicture:
    return picture if isinstance(picture, WorkingPicture) else WorkingPicture.whole(picture)


# A model side counts as met at this share of it: the model's own resize from 90% of its side costs nothing
# measurable, while JPEG's next scale up costs up to twice the decode (a crop needing 0.51 of the picture is decoded
# at 1/2, not in full).
SIDE_SLACK = 0.9


def decode_working(data: bytes, scale: float = 1.0) -> WorkingPicture:
    """The working copy's bytes decoded at `scale` of its size (at least SIDE_SLACK of it; JPEG only, others in
    full)."""
    image = Image.open(io.BytesIO(data))
    size = image.size
    if scale * SIDE_SLACK < 1 and image.format == "JPEG":
        image.draft("RGB", draft_size(size, scale * SIDE_SLACK))
    image.load()
    return WorkingPicture(image if image.mode == "RGB" else image.convert("RGB"), *size)  # convert would copy


def draft_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """`size` at `scale` (at most 1), rounded up: what Pillow's `draft` takes (it decodes at the smallest DCT scale,
    1/1 to 1/8, at least this big)."""
    scale = min(1.0, scale)
    return max(1, math.ceil(size[0] * scale)), max(1, math.ceil(size[1] * scale))


def scale_for_long_side(size: tuple[int, int] | None, side: int) -> float:
    """The decode scale that keeps the long side at least `side` (the detector's letterbox); 1 where the size or the
    side is unknown."""
    return min(1.0, side / max(1, max(size))) if side and size else 1.0


def scale_for_short_sides(needs: Iterable[tuple[tuple[int, int], int]]) -> float:
    """The decode scale that gives each (region size, model side) pair a short side of at least the model's side
    (CLIP and the experts resize a crop's short side to theirs)."""
    return min(1.0, max((side / max(1, min(size)) for size, side in needs if side), default=0.0))
