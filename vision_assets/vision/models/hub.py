"""Model hubs without the wait: when a hub cannot be reached, say so in seconds instead of after a minute and a half
of retries, and let cached models load offline."""

from __future__ import annotations

import functools
import os
import socket
import sys

HUGGING_FACE = "huggingface.co"
GITHUB = "github.com"  # ultralytics downloads its checkpoints from GitHub releases


@functools.cache
def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hugging_face_offline() -> None:
    """Offline mode for huggingface_hub (and so transformers and open_clip). The library reads the setting once, at
    import, so a copy imported before the environment said so is switched as well."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def hugging_face_offline_unless_reachable() -> None:
    if not reachable(HUGGING_FACE):
        hugging_face_offline()
