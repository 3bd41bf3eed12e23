"""Pillow's own `Image.open`, whatever other libraries did to it.

Importing ultralytics replaces `PIL.Image.open` for the whole process with a wrapper that, when Pillow cannot
identify a file, runs `check_requirements("pi-heif")` (a pip install, on a machine that is online) and tries again.
In a run worker that means a hostile upload makes the worker install packages, and the upload's rejection reads
"No module named 'pi_heif'" instead of what is wrong with the file. The wrapper keeps Pillow's function in its
module as `_image_open`; this puts it back.
"""

from __future__ import annotations

import sys

from PIL import Image


def restore_pillow_open() -> None:
    """Make `PIL.Image.open` Pillow's function again if a library wrapped it (and kept the original, as ultralytics
    does); cheap enough to call before every use."""
    current = Image.open
    if current.__module__ == Image.__name__:
        return
    original = getattr(sys.modules.get(current.__module__), "_image_open", None)
    if callable(original) and original.__module__ == Image.__name__:
        Image.open = original
