"""Model hubs without the wait: when a hub cannot be reached, say so in seconds instead of after a minute and a half
of retries, and let cached models load offline."""

from __future__ import annotations

import functools
import socket

from ..process import hugging_face_offline

HUGGING_FACE = "huggingface.co"
GITHUB = "github.com"  # ultralytics downloads its checkpoints from GitHub releases


@functools.cache
def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hugging_face_offline_unless_reachable() -> None:
    if not reachable(HUGGING_FACE):
        hugging_face_offline()
