"""qdrant-client's models (`qdrant_client.models`), imported where first used instead of where this package is.

Importing qdrant_client costs ~0.6 s of CPU (its pydantic models, httpx and gRPC with them), a third of importing
this code location, which every run process does at its launch; a `process_images` run touches the index only in its
last step, so the import now happens there, after its model stages have started, and runs that never reach the index
do not pay it. Read as `from . import qdrant_models as models`: `models.Filter` is `qdrant_client.models.Filter`.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    from qdrant_client import models

    value = getattr(models, name)
    globals()[name] = value  # later reads find it here, without this call
    return value
