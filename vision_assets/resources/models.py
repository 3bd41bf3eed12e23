"""Model resources: settings in, the committee's models out, behind one interface either way:
- with `service_url` (the default under `vision-assets dev` and in deploy/), thin clients of the model service, which
  holds the models loaded across runs: the run imports no model library and loads nothing;
- without it, the models in the run's own process (tests, one-shot CLI use): each loads on first use (a run with no
  dogs never loads the dog expert) and is unloaded when the run ends; with the in-process executor every step of
  the run shares it.
The model ids and revisions stay in the role's model set either way (vision/models/committee_models.py), so code
versions (and staleness) do not depend on where the models run; the model service builds its models from the same
model sets, without Dagster, so both paths build them in one place."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from ..settings import DEFAULTS, Settings
from ..vision.committee.referee import RefereePolicy
from ..vision.models.base import Model, resolve_device
from ..vision.models.classifier import ImageClassifier
from ..vision.models.committee_models import (
    DetectorModels,
    EmbedderModels,
    ModelSet,
    RefereeModels,
    SpecialistModels,
    committee_models,
)
from ..vision.models.detector import YoloDetector
from ..vision.models.embedder import ClipEmbedder
from ..vision.models.referee import VisionLanguageReferee
from ..vision.models.remote import ModelServiceClient, ModelServiceUnavailable
from ..vision.models.taxonomy import TaxonClassifier
from ..vision.process import quiet_libraries


class _ModelResource(dg.ConfigurableResource, ModelSet):
    """A role's models (vision/models/committee_models.py) in a run: built when the run starts, unloaded when it
    ends; in the run's process, or clients of the model service where `service_url` names one."""

    service_url: str = ""  # the model service (vision-assets models serve); "" = the models in this process
    service_patience_seconds: float = 120.0  # how long a call waits out an unreachable service before failing

    def _build(self) -> dict[str, Model]:
        if not self.service_url:
            return self.local_models()
        return self.remote_models(ModelServiceClient(self.service_url, patience_seconds=self.service_patience_seconds))

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


# Each resource is its role's model set (the fields and how the models are built) with a run's lifecycle; the model
# set comes first so its defaults (a role's batch size) win over the base's.
class DetectorResource(DetectorModels, _ModelResource):
    """The router: an ultralytics YOLO checkpoint (hub name like `yolov8n.pt`, or a local path)."""

    @property
    def detector(self) -> YoloDetector:
        return self._model("detector")


class EmbedderResource(EmbedderModels, _ModelResource):
    """The generalist: OpenCLIP (architecture + pretrained tag, `hf-hub:org/repo`, or `local-dir:/path`)."""

    @property
    def embedder(self) -> ClipEmbedder:
        return self._model("embedder")


class SpecialistsResource(SpecialistModels, _ModelResource):
    """The experts, by name: transformers image classifiers, or a taxonomic OpenCLIP expert (BioCLIP)."""

    def classifiers(self) -> dict[str, ImageClassifier | TaxonClassifier]:
        return dict(self._ensure_built())


class RefereeResource(RefereeModels, _ModelResource):
    """The referee in a run, and whether it judges: `mode` `on`, `off`, or `auto` (on where the models run on a
    GPU); `captions` likewise."""

    mode: str = DEFAULTS.referee
    min_probability: float = DEFAULTS.referee_min_probability
    margin: float = DEFAULTS.referee_margin
    max_crops_per_batch: int = DEFAULTS.referee_max_crops_per_batch
    captions: str = DEFAULTS.captions  # `on`, `off`, or `auto` (on where the models run on a GPU)

    @property
    def referee(self) -> VisionLanguageReferee:
        return self._model("referee")

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
    """The detector, embedder, specialists and referee resources the settings describe (for runs, the search service
    and the CLI): each role's model set (committee_models) with where its models run."""
    models = committee_models(settings)
    where = {"service_url": settings.model_service_url or "",
             "service_patience_seconds": settings.model_service_patience_seconds}
    return {
        "detector": DetectorResource(**models["detector"].model_dump(), **where),
        "embedder": EmbedderResource(**models["embedder"].model_dump(), **where),
        "specialists": SpecialistsResource(**models["specialists"].model_dump(), **where),
        "referee": RefereeResource(
            **models["referee"].model_dump(), **where, mode=settings.referee,
            min_probability=settings.referee_min_probability, margin=settings.referee_margin,
            max_crops_per_batch=settings.referee_max_crops_per_batch, captions=settings.captions,
        ),
    }
