"""Where models are found before anything is downloaded: an optional folder (`VISION_ASSETS_MODEL_CACHE`) laid out
as the libraries' own caches are, so a hub id resolves in it exactly as it would after a download. A pre-filled
folder is how air-gapped machines (and this project's tests, with `build-offline`) load hub ids; unset, each
library uses its usual cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HUB_CACHE = Path("huggingface") / "hub"  # models--org--name/{refs/main, snapshots/<revision>/...}
ULTRALYTICS = "ultralytics"  # bare checkpoint names such as `yolov8n.pt`
HF_HUB_PREFIX = "hf-hub:"  # OpenCLIP's spelling of a hub repo as a model name


@dataclass(frozen=True)
class ModelCache:
    root: Path | None = None

    @classmethod
    def at(cls, folder: str | Path | None) -> ModelCache:
        return cls(Path(folder).expanduser().resolve() if folder else None)

    @property
    def hub_dir(self) -> str | None:
        """What to pass as `cache_dir` to transformers and OpenCLIP (None: their default cache)."""
        return str(self.root / HUB_CACHE) if self.root else None

    def hub_revision(self, model_id: str) -> str:
        """The revision `refs/main` points at for a cached hub repo ('' when not cached here). Pinning it keeps the
        model a run used identifiable, and lets an offline load skip the ref lookup."""
        if not self.root:
            return ""
        repo = model_id.removeprefix(HF_HUB_PREFIX)
        if repo.count("/") != 1:
            return ""
        ref = self.root / HUB_CACHE / ("models--" + repo.replace("/", "--")) / "refs" / "main"
        return ref.read_text().strip() if ref.is_file() else ""

    def ultralytics_checkpoint(self, name: str) -> Path | None:
        if not self.root or "/" in name:
            return None
        path = self.root / ULTRALYTICS / name
        return path if path.is_file() else None
