"""The shape every model shares: an identity, load/unload under a lock, batched prediction on a device."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .cache import ModelCache
from .inputs import shrink_to_cover

OFFLINE_HINT = (
    "No network, or the model id is wrong? Build local models with "
    "`vision-assets models build-offline DIR` and set VISION_ASSETS_OFFLINE_MODELS=DIR, or point the model setting "
    "at a local path."
)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says which and how to fix it."""


@dataclass(frozen=True)
class ModelIdentity:
    """What a result was computed with. `revision` pins hub models; for local files it is a content digest, so a
    changed file is a changed model."""

    model_id: str
    revision: str = ""

    def __str__(self) -> str:
        return f"{self.model_id}@{self.revision}" if self.revision else self.model_id


SAMPLE_BYTES = 1 << 20


def local_revision(path: str | Path) -> str:
    """A short content digest of a local model file or folder: each file's name, size, and first and last MiB.
    Retrained weights change it; copying the folder to another machine does not (so code versions, which carry it,
    only change when the model does). Reading 2 MiB a file keeps it fast for multi-GB checkpoints, and the digest is
    cached per (path, size, mtime) of every file, so asking again (identities are read per batch) costs only stats."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    signature = tuple((str(f), (stat := f.stat()).st_size, stat.st_mtime_ns) for f in files)
    return _content_digest(path, signature)


@functools.lru_cache(maxsize=64)
def _content_digest(path: Path, signature: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, size, _ in signature:
        file = Path(name)
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}:{size}".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(SAMPLE_BYTES))
            if size > 2 * SAMPLE_BYTES:
                handle.seek(-SAMPLE_BYTES, os.SEEK_END)
                digest.update(handle.read(SAMPLE_BYTES))
    return "local-" + digest.hexdigest()[:12]


def local_model_path(model_id: str, cache: ModelCache = ModelCache()) -> Path | None:
    """The file or folder a model id names on this machine, if it names one (a path, OpenCLIP's `local-dir:`, or a
    bare ultralytics checkpoint name in the model cache)."""
    path = Path(model_id.removeprefix("local-dir:"))
    if os.path.exists(path):
        return path
    return cache.ultralytics_checkpoint(model_id)


def identity_for(model_id: str, revision: str = "", cache: ModelCache = ModelCache()) -> ModelIdentity:
    """Local models are identified by their content, cached hub models by the revision the cache holds."""
    if not revision:
        local = local_model_path(model_id, cache)
        revision = local_revision(local) if local else cache.hub_revision(model_id)
    return ModelIdentity(model_id, revision)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def torch_dtype(precision: str, device: str):
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ValueError(f"precision must be one of {sorted(dtypes)}, got {precision!r}")
    if precision == "fp16" and not device.startswith("cuda"):
        raise ValueError("fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
    return dtypes[precision]


def fast_bf16(device: str) -> bool:
    """bf16 pays only where the hardware computes in it: CPUs with AVX512-BF16 or AMX (else oneDNN emulates it,
    slower than fp32), GPUs from Ampere on."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # noqa: SLF001 - torch has no public bf16 probe for the CPU


def resolve_precision(precision: str, device: str, auto: dict[str, str]) -> str:
    """`auto`: the model's own choice for the device kind (`auto["cpu"]`, `auto["cuda"]`), measured by
    bench/precision_bench.py; bf16 falls back to fp32 (CPU) or fp16 (GPU) where the hardware lacks it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    kind = "cuda" if device.startswith("cuda") else "cpu"
    chosen = auto[kind]
    if chosen == "bf16" and not fast_bf16(device):
        return "fp16" if kind == "cuda" else "fp32"
    return chosen


class Model(ABC):
    """Loaded at most once; `load()` is idempotent and thread-safe, `unload()` frees memory (GPU included)."""

    # What `precision="auto"` uses on each kind of device: fp32 unless a model measured otherwise (see subclasses).
    AUTO_PRECISION: dict[str, str] = {"cpu": "fp32", "cuda": "fp32"}

    def __init__(self, identity: ModelIdentity, device: str = "auto", precision: str = "auto", batch_size: int = 16,
                 cache: ModelCache = ModelCache(), auto_precision: dict[str, str] | None = None):
        """`auto_precision`: this model's own `auto` choices by device kind, where it measured otherwise than its
        class (e.g. `{"cpu": "fp32"}`)."""
        self.identity = identity
        self.cache = cache
        self.device_setting = device
        self.precision = precision
        self.auto_precision = self.AUTO_PRECISION | (auto_precision or {})
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._loaded: Any = None
        self.load_count = 0

    @property
    def device(self) -> str:
        return resolve_device(self.device_setting)

    @property
    def precision_used(self) -> str:
        """The precision the model computes in: the setting, with `auto` resolved for this model and device."""
        return resolve_precision(self.precision, self.device, self.auto_precision)

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    def load(self) -> Any:
        with self._lock:
            if self._loaded is None:
                try:
                    self._loaded = self._load()
                except ModelLoadError:
                    raise
                except Exception as error:
                    raise ModelLoadError(f"could not load {self.identity}: {type(error).__name__}: {error}. "
                                         f"{OFFLINE_HINT}") from error
                self.load_count += 1
            return self._loaded

    def unload(self) -> None:
        with self._lock:
            self._loaded = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    @property
    def input_side(self) -> int:
        """The side (pixels) the model reads its pictures at (0: it takes them as they come)."""
        return 0

    def model_inputs(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        """The pictures shrunk to what the model reads (see inputs.py): what a local model computes on, and what a
        client of the model service sends."""
        side = self.input_side
        return [shrink_to_cover(image, side) for image in images]

    @property
    def revision_kwargs(self) -> dict[str, str]:
        """`revision=` for hub loaders: the pinned one, never a local content digest."""
        revision = self.identity.revision
        return {"revision": revision} if revision and not revision.startswith("local-") else {}

    @abstractmethod
    def _load(self) -> Any: ...
