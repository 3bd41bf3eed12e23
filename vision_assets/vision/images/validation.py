"""Decide whether bytes are an image the pipeline can use, and turn it into one canonical RGB picture.

Checks run cheapest first (size, magic bytes, header dimensions) so a decompression bomb or a 2 GB file is
refused before anything is decoded. Every failure becomes a `Rejection` with a code and a sentence a reviewer
can act on; no exception from a decoder escapes.
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import imagehash
import numpy as np
from PIL import Image, ImageCms, ImageOps

from ..process import restore_pillow_open
from ..records import CaptureFacts, ImageFacts, Rejection, RejectionCode
from .exif import capture_facts
from .formats import DEFAULT_ALLOWED_FORMATS, SNIFF_BYTES, describe_non_image, sniff_image_format
from .working import draft_size

EXIF_ORIENTATION_TAG = 0x0112
_SRGB = ImageCms.createProfile("sRGB")
_TRANSPARENT_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


@dataclass(frozen=True)
class ValidationLimits:
    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 120_000_000
    min_side: int = 32
    allowed_formats: frozenset[str] = DEFAULT_ALLOWED_FORMATS


@dataclass
class ValidImage:
    """`rgb`: the decoded picture, full size unless the original file serves as its own working copy
    (`original_serves`), when it is a reduced decode (JPEG's DCT scaling, 1/2 to 1/8 of the size for a fraction of
    the work: every coefficient is still read, so damage is found as in a full decode). The facts are the full
    picture's either way."""

    rgb: Image.Image
    facts: ImageFacts
    warnings: list[str] = field(default_factory=list)
    original_serves: bool = False


# The long side of the reduced decode when the original serves, unless the caller needs more (the model input): enough
# for the pHash (32 x 32 from it) and the checks.
REDUCED_DECODE_SIDE = 256
PHASH_SOURCE_SIDE = 512  # the pHash of a picture is taken from a copy at most this big (it reads 32 x 32)


class _Rejected(Exception):
    def __init__(self, code: RejectionCode, message: str):
        super().__init__(message)
        self.rejection = Rejection(code=code, message=message)


def validate_image(data: bytes, limits: ValidationLimits = ValidationLimits(), working_side: int | None = None,
                   reduced_side: int = REDUCED_DECODE_SIDE) -> ValidImage | Rejection:
    """`working_side`: the long side of the working copy the caller keeps (0: full size). Given, a file that can
    serve as its own working copy (`original_serves`) is decoded reduced, to a long side of at least `reduced_side`;
    None: always in full."""
    try:
        return _validate(data, limits, working_side, reduced_side)
    except _Rejected as rejected:
        return rejected.rejection


def _validate(data: bytes, limits: ValidationLimits, working_side: int | None = None,
              reduced_side: int = REDUCED_DECODE_SIDE) -> ValidImage:
    if not data:
        raise _Rejected(RejectionCode.EMPTY, "the object is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise _Rejected(RejectionCode.TOO_LARGE, f"{len(data):,} bytes is over the {limits.max_bytes:,}-byte limit")
    head = data[:SNIFF_BYTES]
    image_format = sniff_image_format(head)
    if image_format is None:
        raise _Rejected(RejectionCode.NOT_AN_IMAGE, f"not an image: the content is {describe_non_image(head)}")
    if image_format not in limits.allowed_formats:
        allowed = ", ".join(sorted(limits.allowed_formats))
        raise _Rejected(RejectionCode.UNSUPPORTED_FORMAT, f"{image_format} images are not accepted (allowed: {allowed})")

    notes: list[str] = []
    with warnings_of_this_thread() as caught:
        image = _open(data, image_format, limits)
        serves = working_side is not None and original_serves(image, image_format, working_side)
        full_size = image.size
        _decode(image, image_format, limits, reduced_to=reduced_side if serves else 0)
        facts_before_orientation = (image.mode, getattr(image, "n_frames", 1))
        capture = _capture_facts(image, notes)
        orientation, image = _apply_exif_orientation(image, notes)
        icc = bool(image.info.get("icc_profile"))
        rgb = to_rgb(image, notes)
    notes.extend(f"decoder warning: {message}" for message in caught)

    width, height = full_size if serves else rgb.size
    if min(width, height) < limits.min_side:
        raise _Rejected(
            RejectionCode.TOO_SMALL,
            f"{width}x{height} is under the minimum side of {limits.min_side} px",
        )
    facts = ImageFacts(
        format=image_format,
        width=width,
        height=height,
        original_mode=facts_before_orientation[0],
        frames=facts_before_orientation[1],
        exif_orientation=orientation,
        icc_profile=icc,
        phash=phash(rgb),
        capture=capture,
    )
    return ValidImage(rgb=rgb, facts=facts, warnings=notes, original_serves=serves)


def phash(rgb: Image.Image) -> str:
    """The perceptual hash, from a copy of at most PHASH_SOURCE_SIDE (it reads a 32 x 32 grey thumbnail: hashing a
    12 MP picture took 127 ms, this 1 ms; the two differ by 0-2 of the 64 bits)."""
    factor = max(rgb.size) // PHASH_SOURCE_SIDE
    return str(imagehash.phash(rgb.reduce(factor) if factor > 1 else rgb))


def original_serves(image: Image.Image, image_format: str, working_side: int) -> bool:
    """A file is its own working copy when the models can read it as it is: a baseline or progressive JPEG in RGB or
    grey, upright (no EXIF turn to apply), in sRGB (or untagged), and within the working copy's side. Then it is not
    decoded in full or encoded again at ingest (583 ms of CPU per 12 MP photo was mostly that)."""
    if image_format != "JPEG" or image.mode not in ("RGB", "L"):
        return False
    if working_side and max(image.size) > working_side:
        return False
    try:
        if image.getexif().get(EXIF_ORIENTATION_TAG) not in (None, 1):
            return False
    except Exception:  # noqa: BLE001 - EXIF that does not parse: the full path notes it
        return False
    icc = image.info.get("icc_profile")
    return not icc or _is_srgb(icc)


def _is_srgb(icc: bytes) -> bool:
    try:
        return "srgb" in ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).lower()
    except Exception:  # noqa: BLE001 - a profile that does not parse is not sRGB
        return False


_capture = threading.local()
_router_lock = threading.Lock()
_shown_elsewhere = warnings.showwarning  # where warnings raised outside a capture go
ALWAYS_SHOWN_FROM = r"(PIL|vision_assets)(\.|$)"


def _route(message, category, filename, lineno, file=None, line=None):
    sink = getattr(_capture, "sink", None)
    if sink is None:
        return _shown_elsewhere(message, category, filename, lineno, file, line)
    if not issubclass(category, DeprecationWarning):
        sink.append(str(message))
    return None


def _install_warning_router() -> None:
    """Warnings go to the list of the thread that raised them. (`warnings.catch_warnings` swaps process-wide state:
    under the ingest threads it handed one image's warnings to another and lost some.) Pillow's warnings are always
    shown, so the second image with the same problem is told too. Checked on every use: whoever replaced the hook
    or the filters since (a test runner does, per test) gets them back wrapped, not lost."""
    global _shown_elsewhere
    with _router_lock:
        if warnings.showwarning is not _route:
            _shown_elsewhere = warnings.showwarning
            warnings.showwarning = _route
        if not any(f[0] == "always" and f[3] is not None and f[3].pattern == ALWAYS_SHOWN_FROM
                   for f in warnings.filters):
            warnings.filterwarnings("always", module=ALWAYS_SHOWN_FROM)


@contextmanager
def warnings_of_this_thread() -> Iterator[list[str]]:
    _install_warning_router()
    sink: list[str] = []
    _capture.sink = sink
    try:
        yield sink
    finally:
        _capture.sink = None


def _raise_pillows_guard_to(max_pixels: int) -> None:
    """Pillow refuses images over twice `Image.MAX_IMAGE_PIXELS` while opening them, before we see their size. Its
    guard is kept at or above ours, so the configured limit is the one that decides, and the one messages cite."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _bomb(error: Image.DecompressionBombError, limits: ValidationLimits) -> _Rejected:
    declared = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(declared.group(1)):,} pixels" if declared else "its declared size"
    return _Rejected(RejectionCode.TOO_MANY_PIXELS, f"{size} is over the {limits.max_pixels:,}-pixel limit: a "
                     "decompression bomb, refused before decoding")


def _open(data: bytes, image_format: str, limits: ValidationLimits) -> Image.Image:
    """The image opened (its header read and checked against the limits), not decoded."""
    _raise_pillows_guard_to(limits.max_pixels)
    restore_pillow_open()  # a library's wrapper would answer for Pillow (and may try to install packages)
    try:
        # `formats=` pins the decoder to what the magic bytes said, so a file can't be decoded as something else.
        image = Image.open(io.BytesIO(data), formats=[image_format])
    except Image.DecompressionBombError as error:
        raise _bomb(error, limits) from error
    except Image.UnidentifiedImageError as error:
        raise _Rejected(
            RejectionCode.CORRUPT, f"starts like {image_format} but its header is invalid or unsupported by the decoder"
        ) from error
    except Exception as error:
        raise _Rejected(RejectionCode.CORRUPT, f"unreadable {image_format} header: {_describe(error)}") from error

    width, height = image.size
    if width <= 0 or height <= 0:
        raise _Rejected(RejectionCode.CORRUPT, f"{image_format} header declares an empty {width}x{height} image")
    if width * height > limits.max_pixels:
        raise _Rejected(
            RejectionCode.TOO_MANY_PIXELS,
            f"{width}x{height} = {width * height:,} pixels is over the {limits.max_pixels:,}-pixel limit "
            "(refused before decoding)",
        )
    return image


def _decode(image: Image.Image, image_format: str, limits: ValidationLimits, reduced_to: int = 0) -> None:
    """Decode the opened image (its first frame); a JPEG at the smallest DCT scale whose long side is at least
    `reduced_to` (0: full size)."""
    try:
        image.seek(0)  # animated images: the first frame stands for the image
        if reduced_to and image_format == "JPEG":
            image.draft(image.mode, draft_size(image.size, reduced_to / max(1, max(image.size))))
        image.load()
    except Image.DecompressionBombError as error:
        raise _bomb(error, limits) from error
    except Exception as error:
        raise _Rejected(RejectionCode.CORRUPT, f"{image_format} data does not decode: {_describe(error)}") from error


def _capture_facts(image: Image.Image, notes: list[str]) -> CaptureFacts | None:
    try:
        return capture_facts(image)
    except Exception as error:  # noqa: BLE001 - broken EXIF must not cost us a good picture
        notes.append(f"EXIF unreadable, capture time and place not kept: {_describe(error)}")
        return None


def _apply_exif_orientation(image: Image.Image, notes: list[str]) -> tuple[int | None, Image.Image]:
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION_TAG)
    except Exception as error:  # noqa: BLE001 - broken EXIF must not cost us a good picture
        notes.append(f"EXIF unreadable, orientation not applied: {_describe(error)}")
        return None, image
    if orientation in (None, 1):
        return orientation, image
    try:
        return orientation, ImageOps.exif_transpose(image)
    except Exception as error:  # noqa: BLE001
        notes.append(f"EXIF orientation {orientation} could not be applied: {_describe(error)}")
        return orientation, image


def to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """Any Pillow mode -> 8-bit sRGB. Transparency is flattened onto white (what viewers show), 16-bit and
    float data are rescaled rather than clipped, and an embedded ICC profile is honoured."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_rescale_to_uint8(image, notes)).convert("RGB")
    image = _to_srgb_by_icc(image, notes)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _TRANSPARENT_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _rescale_to_uint8(image: Image.Image, notes: list[str]) -> np.ndarray:
    pixels = np.asarray(image)
    if image.mode.startswith("I;16"):
        return (pixels.astype(np.uint32) // 257).astype(np.uint8)
    pixels = pixels.astype(np.float64)
    finite = np.isfinite(pixels)
    if not finite.any():
        return np.zeros(pixels.shape, np.uint8)
    low, high = float(pixels[finite].min()), float(pixels[finite].max())
    if image.mode == "F" and 0.0 <= low and high <= 1.0:
        low, high = 0.0, 1.0
    elif 0 <= low and high <= 255:
        low, high = 0.0, 255.0
    else:
        notes.append(f"{image.mode} pixel values {low:g}..{high:g} rescaled to 0..255")
    span = (high - low) or 1.0
    scaled = np.where(finite, (pixels - low) / span * 255.0, 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_srgb_by_icc(image: Image.Image, notes: list[str]) -> Image.Image:
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "CMYK", "L"):
        return image
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" in ImageCms.getProfileDescription(profile).lower():
            return image
        return ImageCms.profileToProfile(image, profile, _SRGB, outputMode="RGB")
    except Exception as error:  # noqa: BLE001 - a bad profile costs colour accuracy, not the image
        notes.append(f"ICC profile ignored: {_describe(error)}")
        return image


def working_copy(rgb: Image.Image, max_side: int) -> Image.Image:
    """The picture every model stage reads, at most `max_side` pixels on its long side (0: as it is). The models
    look at 224-640 px (the detector's input, CLIP's, the experts' crops), so a 50 MP photo kept whole costs each
    stage 150 MB per image held for nothing; 4096 px keeps a crop of an object a twelfth of the picture wide at
    the experts' largest input."""
    if not max_side or max(rgb.size) <= max_side:
        return rgb
    return rgb.resize(size_within(rgb.size, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)


def size_within(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """`size` scaled so its long side is `max_side`, keeping the aspect ratio (never below 1 px)."""
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def encode_normalized(rgb: Image.Image, quality: int = 95) -> bytes:
    """The working copy every model stage reads: RGB JPEG, no chroma subsampling, no metadata."""
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def _describe(error: BaseException) -> str:
    message = str(error).strip() or "no details"
    return f"{type(error).__name__}: {message}"
