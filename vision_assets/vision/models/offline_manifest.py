"""The manifest of an offline-models folder (`vision-assets models build-offline`, vision_assets/tools/): what the
settings read to load every model from that folder."""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "offline.json"


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build it with `vision-assets models build-offline {folder}`")
    manifest = json.loads(path.read_text())
    if "model_cache" not in manifest:
        raise ValueError(f"{path} was written by an older vision-assets: rebuild it with "
                         f"`vision-assets models build-offline {folder} --size {manifest.get('size', 'tiny')}`")
    manifest["model_cache"] = str((Path(folder) / manifest["model_cache"]).resolve())
    return manifest
