"""Pillow's own `Image.open`, whatever other libraries did to it, with HEIF (the iPhone's HEIC photos) added.

Importing ultralytics replaces `PIL.Image.open` for the whole process with a wrapper that, when Pillow cannot
identify a file, runs `check_requirements("pi-heif")` (a pip install, on a machine that is online) and tries again.
In a run worker that means a hostile upload makes the worker install packages, and the upload's rejection reads
"No module named 'pi_heif'" instead of what is wrong with the file. The wrapper keeps Pillow's function in its
module as `_image_open`; this puts it back.

HEIF comes from pillow-heif, registered with Pillow in this process (a plugin registration is per process, and
only code that calls in here decodes uploads). libheif applies the file's own rotation (`irot`/`imir`, which an
iPhone writes from its EXIF orientation) while decoding, and pillow-heif then reports orientation 1, so the
orientation step downstream never turns a HEIC picture twice.
"""

from __future__ import annotations

import sys

import pillow_heif
from PIL import Image

_heif_registered = False


def restore_pillow_open() -> None:
    """Make `PIL.Image.open` Pillow's function again if a library wrapped it (and kept the original, as ultralytics
    does), with the HEIF decoder registered; cheap enough to call before every use."""
    global _heif_registered
    if not _heif_registered:
        # thumbnails=False: a HEIC's embedded thumbnails are never what we want decoded.
        pillow_heif.register_heif_opener(thumbnails=False)
        _heif_registered = True
    current = Image.open
    if current.__module__ == Image.__name__:
        return
    original = getattr(sys.modules.get(current.__module__), "_image_open", None)
    if callable(original) and original.__module__ == Image.__name__:
        Image.open = original
