"""What travels between a run and the model service, in JSON: pictures, vectors as float32 bytes, and each item's
answer or its error. Both sides import this module and nothing heavier.

A picture that is exactly the decode of a JPEG the pipeline stored (the detector's model input, the crops handed to
the experts: `opened_jpeg`) travels as those bytes, which the service decodes the same way (Pillow, RGB): the pixels
the model sees are the same as in a run's own process, for a tenth of the bytes (a 640 px model input is ~90 KB of
JPEG against 1.2 MB of base64 RGB, which the run encoded and the service's worker parsed, copied and decoded: about
11 ms of CPU per picture on both sides together). Any other picture (shrunk or cut for the model) travels as raw RGB
bytes, already at the size the model reads, so it costs no encoding either."""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel

from ..images.decoded_jpeg import opened_jpeg, source_jpeg

# What a client can ask of a model. Item tasks take a list (images or texts) and answer per item, so the service
# batches the items of concurrent requests together; the others answer about the model as a whole.
Task = Literal["describe", "detect", "embed_images", "embed_texts", "prompt_vectors", "classify", "label_names", "judge",
               "caption"]
ITEM_TASKS = frozenset({"detect", "embed_images", "embed_texts", "classify", "judge", "caption"})
TEXT_TASKS = frozenset({"embed_texts", "prompt_vectors"})  # those that take texts, not pictures


class ModelRef(BaseModel):
    """Which model a request is for: its role in the committee (`detector`, `embedder`, or an expert's name) and the
    identity the client's settings name, which the service must hold."""

    role: str
    model_id: str
    revision: str = ""


class ModelRequest(BaseModel):
    task: Task
    model: ModelRef
    images: list[dict[str, Any]] = []  # encode_picture(...) each: {width, height, rgb or jpeg (base64)}
    texts: list[str] = []
    # `judge`: per picture, the question's text and the answers allowed besides "none" (vision/models/referee.py).
    prompts: list[str] = []
    choices: list[list[str]] = []
    sent_at: float = 0.0  # the client's clock when sent: the service's queue-wait metric


class ItemAnswer(BaseModel):
    """One item's answer, or why the model failed on that item alone."""

    value: Any = None
    error: str | None = None
    seconds: float = 0.0  # this item's share of the model call it was computed in (the service's clock)


def encode_picture(image: Image.Image) -> dict[str, Any]:
    if (jpeg := source_jpeg(image)) is not None:
        return {"width": image.width, "height": image.height, "jpeg": base64.b64encode(jpeg).decode("ascii")}
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return {"width": rgb.width, "height": rgb.height, "rgb": base64.b64encode(rgb.tobytes()).decode("ascii")}


def decode_picture(picture: dict[str, Any]) -> Image.Image:
    size = (int(picture["width"]), int(picture["height"]))
    if "jpeg" in picture:
        image = opened_jpeg(base64.b64decode(picture["jpeg"]))
        if image.size != size:
            raise ValueError(f"the JPEG sent as a {size[0]}x{size[1]} picture decodes to {image.width}x{image.height}")
        return image
    data = base64.b64decode(picture["rgb"])
    if len(data) != size[0] * size[1] * 3:
        raise ValueError(f"a {size[0]}x{size[1]} RGB picture needs {size[0] * size[1] * 3} bytes, got {len(data)}")
    return Image.frombytes("RGB", size, data)


def encode_vector(vector: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vector, np.float32).tobytes()).decode("ascii")


def decode_vectors(encoded: list[str], dimension: int) -> np.ndarray:
    if not encoded:
        return np.zeros((0, dimension), np.float32)
    return np.stack([np.frombuffer(base64.b64decode(text), np.float32) for text in encoded])
