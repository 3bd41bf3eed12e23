"""When, where and with what a photo was taken, from its EXIF: capture time, GPS position, camera model.

Phones write all three; scanners, screenshots and web images usually none. Every field is optional and a broken
EXIF block costs only these facts, never the picture (the caller notes why).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from PIL import Image

from ..records import CaptureFacts

MAKE, MODEL = 0x010F, 0x0110
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
DATETIME_ORIGINAL, OFFSET_TIME_ORIGINAL, DATETIME = 0x9003, 0x9011, 0x0132
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4


def capture_facts(image: Image.Image) -> CaptureFacts | None:
    """The capture facts of a decoded image (None when it carries none). Raises on EXIF Pillow cannot parse."""
    exif = image.getexif()
    if not exif:
        return None
    details = exif.get_ifd(EXIF_IFD)
    facts = CaptureFacts(
        taken_at=_taken_at(details.get(DATETIME_ORIGINAL) or exif.get(DATETIME), details.get(OFFSET_TIME_ORIGINAL)),
        camera=_camera(exif.get(MAKE), exif.get(MODEL)),
        **_position(exif.get_ifd(GPS_IFD)),
    )
    return facts if facts.model_dump(exclude_none=True) else None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _taken_at(stamp: Any, offset: Any) -> datetime | None:
    """EXIF's "YYYY:MM:DD HH:MM:SS" is the camera's local clock; with an offset tag (phones write one) it becomes
    an exact instant. Without one it is kept as read and treated as UTC, which a time-range filter must allow for."""
    text = _text(stamp)
    if not text:
        return None
    try:
        taken = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None  # "0000:00:00 00:00:00" and other placeholders cameras write
    zone = UTC
    if (shift := _text(offset)) and len(shift) == 6 and shift[0] in "+-" and shift[3] == ":":
        try:
            sign = 1 if shift[0] == "+" else -1
            zone = timezone(sign * timedelta(hours=int(shift[1:3]), minutes=int(shift[4:6])))
        except ValueError:
            pass
    return taken.replace(tzinfo=zone)


def _camera(make: Any, model: Any) -> str | None:
    make, model = _text(make), _text(model)
    if make and model and not model.lower().startswith(make.lower().split()[0]):
        return f"{make} {model}"  # "Canon EOS R5" already names its maker; "iPhone 15 Pro" does not
    return model or make


def _position(gps: dict) -> dict[str, float]:
    try:
        latitude = _degrees(gps[GPS_LAT], gps.get(GPS_LAT_REF), "S")
        longitude = _degrees(gps[GPS_LON], gps.get(GPS_LON_REF), "W")
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return {}
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180) or (latitude, longitude) == (0, 0):
        return {}  # out of range, or the 0,0 a receiver without a fix writes
    return {"latitude": round(latitude, 7), "longitude": round(longitude, 7)}


def _degrees(parts: Any, reference: Any, negative: str) -> float:
    degrees, minutes, seconds = (float(part) for part in parts)
    value = degrees + minutes / 60 + seconds / 3600
    return -value if _text(reference) == negative else value
