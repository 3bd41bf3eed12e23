"""Everything this project changes about the process it runs in, in one module, so nobody has to hunt for it:
environment defaults that keep libraries from phoning home, hubs switched offline, Pillow's freed image memory
kept for the next picture, Pillow's own `Image.open` put back, ultralytics imported without its side effects.
Nothing here runs at import; `vision_assets.bootstrap` and the model code call these where a process starts or a
library is first imported (the patches must follow the library's own import, so they are functions, called again
when needed, and cheap then).

`restore_pillow_open`: Pillow's own `Image.open`, whatever other libraries did to it, with HEIF (the iPhone's HEIC
photos) added.

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

import os
import sys

import pillow_heif
from PIL import Image


def quiet_libraries(offline: bool) -> None:
    """No telemetry from the hubs ever; with local models (`offline`) nothing may reach a hub at all: no weight
    lookups, no version checks, no ultralytics settings sync."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # ultralytics logs at INFO unless told otherwise: its settings-file banner on a first import, in the CLI's
    # output. Its errors still reach the log.
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if offline:
        hugging_face_offline()
        os.environ.setdefault("YOLO_OFFLINE", "1")


# Freed 16 MB blocks of image memory Pillow keeps for the next picture (at most 256 MB a process, and only what a
# peak once held). Pillow's default keeps none: its blocks go back to the C allocator, which returns large ones to the
# kernel, so the next large picture's pages are faulted in and zeroed afresh. A full decode of a 12 MP JPEG (48 MB in
# Pillow) costs 76 ms of CPU keeping none (19 ms in the kernel, 11,700 page faults) and 62 keeping 16; an EXIF-turned
# photo's ingest 190 and 165 (bench/run_overhead_bench.py). Pillow's own PILLOW_BLOCKS_MAX wins.
PILLOW_BLOCKS_KEPT = 16


def keep_pillow_blocks() -> None:
    if "PILLOW_BLOCKS_MAX" not in os.environ:  # read by Pillow at import; this is the call its tests use to set it
        Image.core.set_blocks_max(PILLOW_BLOCKS_KEPT)


def hugging_face_offline() -> None:
    """Offline mode for huggingface_hub (and so transformers and open_clip). The library reads the setting once, at
    import, so a copy imported before the environment said so is switched as well."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


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


def import_ultralytics_yolo():
    """`ultralytics.YOLO`, without the side effects of importing it:
    - it sets `OMP_NUM_THREADS=1` when unset (a training default), which left every CPU model of the run on one
      core: the thread count torch had before the import is put back;
    - it installs missing packages with pip when something asks for one (`YOLO_AUTOINSTALL`, on by default): a
      run worker never installs anything, online or not, so that is switched off, also when ultralytics was
      imported before (its flag is read at import);
    - it wraps `PIL.Image.open` for the whole process (see `restore_pillow_open`): Pillow's own is put back."""
    import torch

    os.environ["YOLO_AUTOINSTALL"] = "false"
    threads = torch.get_num_threads()
    import ultralytics.utils
    import ultralytics.utils.checks
    from ultralytics import YOLO

    torch.set_num_threads(threads)
    ultralytics.utils.AUTOINSTALL = ultralytics.utils.checks.AUTOINSTALL = False
    restore_pillow_open()
    return YOLO
