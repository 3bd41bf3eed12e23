"""Model resources: settings in, the committee's models out, behind one interface either way:
- with `service_url` (the default under `vision-assets dev` and in deploy/), thin clients of the model service, which
  holds the models loaded across runs: the run imports no model library and loads nothing;
- without it, the models in the run's own process (tests, one-shot CLI use): each loads on first use (a run with no
  dogs never loads the dog expert) and is unloaded when the run ends; with the in-process executor every step of
  the run shares it.
The model ids and revisions stay here either way, so code versions (and staleness) do not depend on where the
models run. The model service builds its models through `local_models`, so both paths build them in one place."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from ..settings import DEFAULTS, Settings
from ..vision.committee.referee import RefereePolicy
from ..vision.models.base import Model, ModelIdentity, identity_for, resolve_device
from ..vision.models.cache import ModelCache
from ..vision.models.classifier import ImageClassifier
from ..vision.models.detector import YoloDetector
from ..vision.models.embedder import ClipEmbedder
from ..vision.models.referee import VisionLanguageReferee
from ..vision.models.remote import ModelServiceClient, ModelServiceUnavailable, model_ref, remote_model
from ..vision.models.taxonomy import TaxonClassifier, is_taxonomic
from ..vision.models.wire import ModelRef
from ..vision.process import quiet_libraries
from ..vision.reuse import version_of


class _ModelResource(dg.ConfigurableResource):
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 16
    offline: bool = False
    model_cache: str = ""  # a folder laid out as the libraries' caches (see vision/models/cache.py); "" = theirs
    service_url: str = ""  # the model service (vision-assets models serve); "" = the models in this process
    service_patience_seconds: float = 120.0  # how long a call waits out an unreachable service before failing

    @property
    def cache(self) -> ModelCache:
        return ModelCache.at(self.model_cache)

    def _identity(self, model_id: str, revision: str = "") -> ModelIdentity:
        return identity_for(model_id, revision, self.cache)

    def _runtime(self) -> dict:
        return {"device": self.device, "precision": self.precision, "batch_size": self.batch_size, "cache": self.cache}

    def _build_local(self, runtime: dict) -> dict[str, Model]:
        raise NotImplementedError

    def identities(self) -> dict[str, ModelIdentity]:
        """Role -> what each model is (id and revision)."""
        raise NotImplementedError

    def refs(self) -> dict[str, ModelRef]:
        """Role -> the identity a request to the model service names (and the service holds)."""
        pretrained = getattr(self, "pretrained", "")
        return {role: model_ref(role, identity, pretrained) for role, identity in self.identities().items()}

    def local_models(self, device: str | None = None) -> dict[str, Model]:
        """The models in this process (on `device`, default the setting's), none loaded yet."""
        return self._build_local(self._runtime() | ({"device": device} if device else {}))

    def _build(self) -> dict[str, Model]:
        if not self.service_url:
            return self.local_models()
        client = ModelServiceClient(self.service_url, patience_seconds=self.service_patience_seconds)
        identities = self.identities()
        return {role: remote_model(client, ref, identities[role]) for role, ref in self.refs().items()}

    _models: dict[str, Model] = PrivateAttr(default_factory=dict)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        quiet_libraries(self.offline)
        self._models = self._build()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        for model in self._models.values():
            model.unload()

    def _ensure_built(self) -> dict[str, Model]:
        if not self._models:  # used outside a run (tests, the CLI): build on first use
            quiet_libraries(self.offline)
            self._models = self._build()
        return self._models

    def _model(self, name: str) -> Model:
        return self._ensure_built()[name]

    @property
    def load_counts(self) -> dict[str, int]:
        return {name: model.load_count for name, model in self._models.items()}


class DetectorResource(_ModelResource):
    """The router: an ultralytics YOLO checkpoint (hub name like `yolov8n.pt`, or a local path)."""

    model: str = DEFAULTS.detector_model
    revision: str = ""
    confidence: float = DEFAULTS.detector_confidence
    max_detections: int = DEFAULTS.detector_max_detections
    image_size: int = DEFAULTS.detector_image_size

    def identities(self) -> dict[str, ModelIdentity]:
        return {"detector": self._identity(self.model, self.revision)}

    def _build_local(self, runtime: dict) -> dict[str, Model]:
        return {"detector": YoloDetector(
            self._identity(self.model, self.revision), **runtime,
            confidence=self.confidence, max_detections=self.max_detections, image_size=self.image_size,
        )}

    @property
    def detector(self) -> YoloDetector:
        return self._model("detector")

    @property
    def version(self) -> str:
        """What shapes the boxes (vision/reuse.py): the model and the settings that filter its answers."""
        return version_of(self.identity, self.confidence, self.max_detections, self.image_size)

    @property
    def identity(self) -> str:
        return str(self._identity(self.model, self.revision))


class EmbedderResource(_ModelResource):
    """The generalist: OpenCLIP (architecture + pretrained tag, `hf-hub:org/repo`, or `local-dir:/path`)."""

    model: str = DEFAULTS.clip_model
    pretrained: str = DEFAULTS.clip_pretrained
    batch_size: int = DEFAULTS.clip_batch_size

    def identities(self) -> dict[str, ModelIdentity]:
        return {"embedder": self._identity(self.model)}

    def _build_local(self, runtime: dict) -> dict[str, Model]:
        return {"embedder": ClipEmbedder(self._identity(self.model), **runtime, pretrained=self.pretrained)}

    @property
    def embedder(self) -> ClipEmbedder:
        return self._model("embedder")

    @property
    def identity(self) -> str:
        identity = str(self._identity(self.model))
        return f"{identity}/{self.pretrained}" if self.pretrained else identity


class SpecialistsResource(_ModelResource):
    """The experts, by name: a transformers image classifier each (hub id or local `save_pretrained` folder), or a
    taxonomic OpenCLIP expert (`hf-hub:imageomics/bioclip`, see vision/models/taxonomy.py)."""

    models: dict[str, str] = {}
    top_k: int = DEFAULTS.specialist_top_k
    drop_labels: list[str] = sorted(DEFAULTS.drop_labels)
    batch_size: int = DEFAULTS.specialist_batch_size
    # Experts whose `auto` precision on a CPU is not the classifiers' bf16. bench/precision_bench.py, 64 crops:
    # the wildlife expert (10,000 species) agreed with fp32 on top-1 for 92% of crops, under the 95% asked of bf16
    # (every differing crop was an exact tie in fp32, as random weights make them), so it computes in fp32 there.
    cpu_precision: dict[str, str] = {"wildlife": "fp32"}

    def identities(self) -> dict[str, ModelIdentity]:
        return {name: self._identity(model_id) for name, model_id in self.models.items()}

    def _build_local(self, runtime: dict) -> dict[str, Model]:
        measured = {name: {"cpu": precision} for name, precision in self.cpu_precision.items()}
        built: dict[str, Model] = {}
        for name, model_id in self.models.items():
            if is_taxonomic(model_id):  # BioCLIP: OpenCLIP against the Tree of Life's taxon embeddings
                built[name] = TaxonClassifier(self._identity(model_id), **runtime, top_k=self.top_k,
                                              auto_precision=measured.get(name))
            else:
                built[name] = ImageClassifier(self._identity(model_id), **runtime, top_k=self.top_k,
                                              drop_labels=self.drop_labels, auto_precision=measured.get(name))
        return built

    def classifiers(self) -> dict[str, ImageClassifier | TaxonClassifier]:
        return dict(self._ensure_built())

    @property
    def identity(self) -> str:
        return ",".join(f"{name}={self._identity(model_id)}" for name, model_id in sorted(self.models.items()))


class RefereeResource(_ModelResource):
    """The referee: a small vision-language model answering closed questions about doubtful crops (see
    vision/committee/referee.py). `mode`: `on`, `off`, or `auto` (on where the models run on a GPU)."""

    model: str = DEFAULTS.referee_model
    revision: str = ""
    mode: str = DEFAULTS.referee
    min_probability: float = DEFAULTS.referee_min_probability
    margin: float = DEFAULTS.referee_margin
    max_crops_per_batch: int = DEFAULTS.referee_max_crops_per_batch
    batch_size: int = DEFAULTS.referee_batch_size
    captions: str = DEFAULTS.captions  # `on`, `off`, or `auto` (on where the models run on a GPU)

    def identities(self) -> dict[str, ModelIdentity]:
        return {"referee": self._identity(self.model, self.revision)} if self.model else {}

    def _build_local(self, runtime: dict) -> dict[str, Model]:
        if not self.model:
            return {}
        return {"referee": VisionLanguageReferee(self._identity(self.model, self.revision), **runtime)}

    @property
    def referee(self) -> VisionLanguageReferee:
        return self._model("referee")

    @property
    def identity(self) -> str:
        return str(self._identity(self.model, self.revision)) if self.model else ""

    @property
    def policy(self) -> RefereePolicy:
        return RefereePolicy(self.min_probability, self.margin, self.max_crops_per_batch)

    def off_because(self) -> str | None:
        """Why the referee does not judge crops (None: it does)."""
        return self._off_because(self.mode, "VISION_ASSETS_REFEREE", "the referee", "a crop")

    def captions_off_because(self) -> str | None:
        """Why images get no caption (None: they do)."""
        return self._off_because(self.captions, "VISION_ASSETS_CAPTIONS", "captions", "an image")

    def _off_because(self, mode: str, variable: str, what: str, per: str) -> str | None:
        """`auto` asks where the models run (see `_on_gpu`)."""
        if mode == "off" or not self.model:
            return f"{what} off ({variable}=off)"
        if mode == "on":
            return None
        on_gpu = self._on_gpu()
        if isinstance(on_gpu, str):  # an outage of the referee's service fails nothing
            return f"{what} off for now: {on_gpu}"
        return None if on_gpu else (f"{what} off: the models run on a CPU, where the referee's model costs seconds "
                                    f"{per} ({variable}=auto; set it to `on` to use it anyway)")

    _where: bool | str | None = PrivateAttr(default=None)

    def _on_gpu(self) -> bool | str:
        """Whether the models run on a GPU: the model service's devices, or this process's, without loading the
        referee; asked once for both switches (an unreachable service waits out its patience once, not twice), and
        why not where the service cannot be asked."""
        if self._where is None:
            if self.service_url:
                try:
                    held = ModelServiceClient(self.service_url, self.service_patience_seconds).held()
                    self._where = held.get("accelerator") == "cuda"
                except ModelServiceUnavailable as error:
                    self._where = str(error)
            else:
                self._where = resolve_device(self.device).startswith("cuda")
        return self._where


def committee_resources(settings: Settings) -> dict[str, _ModelResource]:
    """The detector, embedder and specialists resources the settings describe (for runs, the search service and the
    model service alike)."""
    runtime = {"device": settings.device, "precision": settings.precision, "offline": bool(settings.offline_models),
               "model_cache": settings.model_cache, "service_url": settings.model_service_url or "",
               "service_patience_seconds": settings.model_service_patience_seconds}
    return {
        "detector": DetectorResource(
            model=settings.detector_model, confidence=settings.detector_confidence,
            max_detections=settings.detector_max_detections, image_size=settings.detector_image_size,
            batch_size=settings.detector_batch_size, **runtime,
        ),
        "embedder": EmbedderResource(
            model=settings.clip_model, pretrained=settings.clip_pretrained, batch_size=settings.clip_batch_size,
            **runtime,
        ),
        "specialists": SpecialistsResource(
            models=settings.specialist_models, top_k=settings.specialist_top_k, drop_labels=sorted(settings.drop_labels),
            batch_size=settings.specialist_batch_size, **runtime,
        ),
        "referee": RefereeResource(
            model=settings.referee_model, mode=settings.referee, min_probability=settings.referee_min_probability,
            margin=settings.referee_margin, max_crops_per_batch=settings.referee_max_crops_per_batch,
            batch_size=settings.referee_batch_size, captions=settings.captions, **runtime,
        ),
    }
