"""Pictures that are exactly the decode of a JPEG the pipeline stored (the detector's model input, the crops handed to
the experts), remembering those bytes: a model service is sent the bytes instead of the pixels
(vision/models/wire.py), and decodes them the same way, so its model sees the same pixels as a run's own."""

from __future__ import annotations

import io

from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

# Where `opened_jpeg` keeps a picture's bytes (in its `info`, with the size they decode to).
SOURCE_JPEG = "vision_assets.source_jpeg"


def opened_jpeg(data: bytes) -> Image.Image:
    """JPEG bytes decoded to RGB, as the service decodes them (`decode_picture`). An RGB JPEG stays Pillow's
    JpegImageFile and keeps its bytes, so a model service can be sent them instead of its pixels. Every picture
    derived from it (a crop, a resize, a turn) is a plain Image, which `source_jpeg` does not take for the file."""
    image = Image.open(io.BytesIO(data))
    if image.format != "JPEG" or image.mode != "RGB":
        return image.convert("RGB")
    image.load()
    image.info[SOURCE_JPEG] = (data, image.size)
    return image


def source_jpeg(image: Image.Image) -> bytes | None:
    """The JPEG bytes `image` is exactly the decode of, if `opened_jpeg` made it and nothing changed it since."""
    kept = image.info.get(SOURCE_JPEG) if isinstance(image, JpegImageFile) else None
    return kept[0] if kept and kept[1] == image.size and image.mode == "RGB" else None
