import io
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image

from tests.conftest import corpus_files, image_bytes, phone_photo_bytes
from vision_assets.vision.images.validation import ValidationLimits, ValidImage, validate_image
from vision_assets.vision.records import Rejection, RejectionCode


def valid(data: bytes, limits=ValidationLimits()) -> ValidImage:
    outcome = validate_image(data, limits)
    assert isinstance(outcome, ValidImage), outcome
    assert outcome.rgb.mode == "RGB"
    return outcome


def rejected(data: bytes, code: RejectionCode, limits=ValidationLimits()) -> Rejection:
    outcome = validate_image(data, limits)
    assert isinstance(outcome, Rejection), f"expected {code}, got a valid image"
    assert outcome.code == code, outcome
    assert outcome.message and "0x7f" not in outcome.message
    return outcome


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and carries almost no data: the decompression-bomb shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"])
def test_ordinary_formats_are_valid(fmt):
    outcome = valid(image_bytes((80, 60), fmt=fmt))
    assert (outcome.facts.width, outcome.facts.height) == (80, 60)
    assert outcome.facts.format == fmt
    assert len(outcome.facts.phash) == 16


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "LA", "RGBA", "I", "F", "YCbCr", "I;16"])
def test_every_mode_becomes_rgb(mode):
    image = Image.new(mode, (40, 40))
    fmt = "TIFF" if mode in ("I", "F", "I;16", "CMYK", "YCbCr", "LA") else "PNG"
    if mode == "YCbCr":
        fmt = "JPEG"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    outcome = valid(buffer.getvalue())
    assert outcome.facts.original_mode in (mode, "RGB", "I;16")


def test_sixteen_bit_is_rescaled_not_clipped():
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    rgb = np.asarray(valid(buffer.getvalue()).rgb)
    assert rgb.min() == 0 and rgb.max() >= 250  # clipping would make most of it 255
    assert (rgb[..., 0] == 255).mean() < 0.05


def test_transparency_is_flattened_onto_white():
    outcome = valid(image_bytes((40, 40), mode="RGBA", color=(255, 0, 0, 0)))
    assert outcome.rgb.getpixel((5, 5)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (80, 40), (10, 200, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    outcome = valid(buffer.getvalue())
    assert (outcome.facts.width, outcome.facts.height) == (40, 80)
    assert outcome.facts.exif_orientation == 6


def test_an_iphone_heic_decodes_upright_with_its_capture_facts():
    data = phone_photo_bytes(size=(96, 64), orientation=6)  # held upright: stored landscape, shown portrait
    assert data[4:12] == b"ftypheic"
    outcome = valid(data)
    assert outcome.facts.format == "HEIF"
    assert (outcome.facts.width, outcome.facts.height) == (64, 96)  # turned once, by libheif, not twice
    assert outcome.rgb.getpixel((32, 5))[2] > 150 and outcome.rgb.getpixel((32, 90))[0] > 150  # blue went to the top
    capture = outcome.facts.capture
    assert capture.taken_at == datetime(2026, 7, 14, 9, 30, 5, tzinfo=timezone(timedelta(hours=2)))
    assert (capture.latitude, capture.longitude) == (pytest.approx(52.370139), pytest.approx(4.891667))
    assert capture.camera == "Apple iPhone 15 Pro"


def test_capture_facts_from_a_jpeg_south_west_and_no_offset():
    data = phone_photo_bytes(fmt="JPEG", offset=None, make="Canon", model="Canon EOS R5",
                             gps=((33.0, 51.0, 54.0), "S", (151.0, 12.0, 36.0), "W"))
    capture = valid(data).facts.capture
    assert capture.taken_at == datetime(2026, 7, 14, 9, 30, 5, tzinfo=UTC)  # the camera's clock, as UTC
    assert (capture.latitude, capture.longitude) == (pytest.approx(-33.865), pytest.approx(-151.21))
    assert capture.camera == "Canon EOS R5"  # the model already names its maker


def test_placeholder_exif_gives_no_capture_facts():
    data = phone_photo_bytes(fmt="JPEG", taken="0000:00:00 00:00:00", gps=((0.0, 0.0, 0.0), "N", (0.0, 0.0, 0.0), "E"),
                             make="", model="")
    assert valid(data).facts.capture is None
    assert valid(image_bytes(fmt="JPEG")).facts.capture is None  # no EXIF at all


def test_a_truncated_heic_is_corrupt_not_a_crash():
    data = phone_photo_bytes()
    rejected(data[: len(data) // 2], RejectionCode.CORRUPT)


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (40, 40), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    outcome = valid(buffer.getvalue())
    assert outcome.facts.frames == 2
    red, green, blue = outcome.rgb.getpixel((1, 1))
    assert red > 200 and blue < 50


def test_extension_does_not_matter_only_content():
    assert valid(image_bytes(fmt="PNG")).facts.format == "PNG"  # whatever the key's extension says


def test_empty_object():
    rejected(b"", RejectionCode.EMPTY)


def test_too_many_bytes():
    rejected(image_bytes((64, 64)), RejectionCode.TOO_LARGE, ValidationLimits(max_bytes=100))


@pytest.mark.parametrize(
    "data,what",
    [
        (b"%PDF-1.7\n...", "PDF"),
        (b"PK\x03\x04rest-of-zip", "ZIP"),
        (b"hello, this is a text file\n", "text"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
        (bytes(range(256)), "unrecognised"),
    ],
)
def test_not_images_say_what_they_are(data, what):
    assert what in rejected(data, RejectionCode.NOT_AN_IMAGE).message


def test_recognised_but_not_allowed_format():
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48)).save(buffer, format="ICO")
    assert "ICO" in rejected(buffer.getvalue(), RejectionCode.UNSUPPORTED_FORMAT).message


def test_truncated_image_is_corrupt():
    data = image_bytes((256, 256), fmt="JPEG", quality=95)
    rejected(data[: len(data) // 2], RejectionCode.CORRUPT)


def test_garbage_after_a_real_header_is_corrupt():
    data = image_bytes((64, 64), fmt="PNG")
    rejected(data[:40] + b"\x00" * 200, RejectionCode.CORRUPT)


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    from PIL import ImageFile

    def no_decoding(self):
        raise AssertionError("a 2.5-gigapixel image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)  # refused from the header, never decoded
    message = rejected(png_header_only(50_000, 50_000), RejectionCode.TOO_MANY_PIXELS).message
    assert "pixel" in message


def test_pixel_limit_is_ours_not_pillows():
    message = rejected(png_header_only(3000, 3000), RejectionCode.TOO_MANY_PIXELS,
                       ValidationLimits(max_pixels=1_000_000)).message
    assert "9,000,000 pixels is over the 1,000,000-pixel limit" in message


def test_a_bomb_beyond_pillows_own_guard_cites_the_configured_limit():
    """40,000 x 40,000 trips Pillow's guard while opening: the message still names the limit that is configured."""
    message = rejected(png_header_only(40_000, 40_000), RejectionCode.TOO_MANY_PIXELS).message
    assert message == ("1,600,000,000 pixels is over the 120,000,000-pixel limit: a decompression bomb, refused "
                       "before decoding")
    assert "178,956,970" not in message  # Pillow's default, not ours


def test_a_limit_above_pillows_default_is_the_one_that_decides():
    """15,000 x 15,000 = 225 MP: over Pillow's default guard, under a configured 250 MP. Not refused for its size
    (this header-only file then fails to decode, which is the honest outcome)."""
    outcome = validate_image(png_header_only(15_000, 15_000), ValidationLimits(max_pixels=250_000_000))
    assert isinstance(outcome, Rejection) and outcome.code == RejectionCode.CORRUPT


def exif_truncated_jpeg(shade: int) -> bytes:
    """A JPEG whose EXIF block ends early: Pillow warns "Truncated File Read" when it is read."""
    exif = Image.Exif()
    exif[0x010E] = "d" * 40  # ImageDescription, long enough to be stored out of line
    buffer = io.BytesIO()
    Image.new("RGB", (1500, 1000), (shade, 0, 0)).save(buffer, "JPEG", exif=exif.tobytes()[:-20])
    return buffer.getvalue()


def test_warnings_belong_to_the_image_that_raised_them_whatever_the_threads():
    warning = [(exif_truncated_jpeg(shade), 1) for shade in range(16)]
    clean = [(image_bytes((1500, 1000), fmt="JPEG", color=(shade, shade, shade)), 0) for shade in range(16)]
    jobs = [job for pair in zip(warning, clean) for job in pair] * 2  # big enough that decodes overlap
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda job: validate_image(job[0]), jobs))
    warned = [sum(w.startswith("decoder warning") for w in outcome.warnings) for outcome in outcomes]
    assert warned == [expected for _, expected in jobs]  # each its own warning, once; none on the clean ones


def test_minimum_resolution():
    assert "16x16" in rejected(image_bytes((16, 16)), RejectionCode.TOO_SMALL).message
    valid(image_bytes((16, 16)), ValidationLimits(min_side=16))


def test_every_corpus_file_ends_valid_or_rejected_with_a_reason():
    """Pillow's own test images, broken ones included: each gets an outcome, quickly, and nothing raises."""
    outcomes = {}
    for path in corpus_files():
        started = time.perf_counter()
        outcome = validate_image(path.read_bytes())
        assert time.perf_counter() - started < 10, f"{path.name} took too long"
        if isinstance(outcome, Rejection):
            assert outcome.message.strip(), path
        else:
            assert outcome.rgb.mode == "RGB" and min(outcome.rgb.size) >= 32
        outcomes[path.name] = outcome
    rejections = {n: o.code for n, o in outcomes.items() if isinstance(o, Rejection)}
    assert len(outcomes) >= 700
    # Known-bad files from the corpus end as the right kind of rejection.
    assert rejections["truncated_jpeg.jpg"] == RejectionCode.CORRUPT
    assert rejections["broken.png"] == RejectionCode.CORRUPT
    assert rejections["decompression_bomb.gif"] == RejectionCode.TOO_MANY_PIXELS
    assert rejections["zero_width.gif"] == RejectionCode.CORRUPT
    assert all(code == RejectionCode.CORRUPT for n, code in rejections.items() if n.startswith("crash-"))
    assert "hopper.jpg" not in rejections and "hopper.png" not in rejections
