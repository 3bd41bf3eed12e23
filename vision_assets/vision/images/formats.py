"""What a file really is, from its first bytes: file extensions and Content-Type headers lie."""

from __future__ import annotations

from collections.abc import Callable

Signature = Callable[[bytes], bool]

# (format name as Pillow calls it, magic test) in the order they are tried.
_IMAGE_SIGNATURES: list[tuple[str, Signature]] = [
    ("JPEG", lambda h: h.startswith(b"\xff\xd8\xff")),
    ("PNG", lambda h: h.startswith(b"\x89PNG\r\n\x1a\n")),
    ("GIF", lambda h: h[:6] in (b"GIF87a", b"GIF89a")),
    ("WEBP", lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP"),
    ("BMP", lambda h: h.startswith(b"BM")),
    ("TIFF", lambda h: h[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")),
    ("JPEG2000", lambda h: h.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or h.startswith(b"\xffO\xffQ")),
    ("AVIF", lambda h: h[4:8] == b"ftyp" and h[8:12] in (b"avif", b"avis")),
    ("HEIF", lambda h: h[4:8] == b"ftyp" and h[8:12] in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1")),
    ("ICO", lambda h: h.startswith(b"\x00\x00\x01\x00")),
    ("CUR", lambda h: h.startswith(b"\x00\x00\x02\x00")),
    ("PPM", lambda h: len(h) > 2 and h[:1] == b"P" and h[1:2] in b"123456fF" and h[2:3] in b" \t\r\n"),
    ("PSD", lambda h: h.startswith(b"8BPS")),
    ("DDS", lambda h: h.startswith(b"DDS ")),
    ("QOI", lambda h: h.startswith(b"qoif")),
    ("PCX", lambda h: h[:1] == b"\x0a" and h[1:2] in b"\x00\x02\x03\x04\x05" and h[2:3] == b"\x01"),
    ("SGI", lambda h: h.startswith(b"\x01\xda")),
    ("FITS", lambda h: h.startswith(b"SIMPLE  =")),
    ("EPS", lambda h: h.startswith(b"%!PS") or h.startswith(b"\xc5\xd0\xd3\xc6")),
    ("XBM", lambda h: h.lstrip().startswith(b"#define")),
    ("ICNS", lambda h: h.startswith(b"icns")),
    ("BLP", lambda h: h[:4] in (b"BLP1", b"BLP2")),
    ("FLI", lambda h: len(h) > 6 and h[4:6] in (b"\x11\xaf", b"\x12\xaf")),
]

# Recognised non-images, so a rejection can say what the file actually is.
_OTHER_SIGNATURES: list[tuple[str, Signature]] = [
    ("PDF document", lambda h: h.startswith(b"%PDF")),
    ("ZIP archive", lambda h: h.startswith(b"PK\x03\x04")),
    ("gzip archive", lambda h: h.startswith(b"\x1f\x8b")),
    ("SVG or XML document", lambda h: h.lstrip()[:5] in (b"<?xml", b"<svg ", b"<svg>")),
    ("HTML document", lambda h: h.lstrip()[:5].lower() in (b"<!doc", b"<html")),
    ("MP4/QuickTime video", lambda h: h[4:8] == b"ftyp"),
]

# Photo formats the pipeline accepts by default. The rest of `_IMAGE_SIGNATURES` are recognised so they get a
# precise "unsupported format" rejection instead of "not an image".
DEFAULT_ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "JPEG2000", "AVIF", "HEIF"})

SNIFF_BYTES = 32


def sniff_image_format(head: bytes) -> str | None:
    for name, matches in _IMAGE_SIGNATURES:
        if matches(head):
            return name
    return None


def describe_non_image(head: bytes) -> str:
    for name, matches in _OTHER_SIGNATURES:
        if matches(head):
            return name
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "text"
    return f"unrecognised data starting {head[:8].hex(' ')}"
