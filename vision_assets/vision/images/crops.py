"""The crops the embeddings stage cut, handed to the experts' stage: each crop at the side its expert reads (or CLIP's),
as JPEG bytes (quality 92) packed into the image's `~embeddings.npz`. The experts then see the crops CLIP embedded, and
their stage decodes no working copy for them (a 12 MP photo costs 40-50 ms per decode, a crop's JPEG under 1 ms)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .decoded_jpeg import opened_jpeg

HANDED_QUALITY = 92


def pack_crops(crops: Sequence[Image.Image]) -> dict[str, np.ndarray]:
    """`crop_jpegs` (every crop's JPEG, one after the other) and `crop_offsets` (where each starts, and the end)."""
    encoded = []
    for crop in crops:
        buffer = io.BytesIO()
        crop.convert("RGB").save(buffer, format="JPEG", quality=HANDED_QUALITY)
        encoded.append(np.frombuffer(buffer.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(e) for e in encoded]).astype(np.int64)
    return {"crop_jpegs": np.concatenate(encoded) if encoded else np.zeros(0, np.uint8), "crop_offsets": offsets}


def unpack_crops(arrays: dict[str, np.ndarray] | None) -> list[Image.Image] | None:
    """The crops `pack_crops` packed, in order; None where none were handed over (results from before)."""
    if not arrays or "crop_offsets" not in arrays:
        return None
    data, offsets = arrays["crop_jpegs"], arrays["crop_offsets"]
    return [opened_jpeg(data[start:end].tobytes()) for start, end in zip(offsets[:-1], offsets[1:], strict=True)]
