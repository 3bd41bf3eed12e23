"""What each role of the committee is, and how its models are built, from the settings: the detector, the embedder,
the experts and the referee. Plain Python (no Dagster): the model service builds the committee it holds from these,
and the Dagster resources (resources/models.py) are these same classes with a run's lifecycle and the choice of
running the models in the run or at the model service. The model ids and revisions live here, so code versions,
staleness and the service's refusal of a model it does not hold all read one definition."""

from __future__ import annotations

from pydantic import BaseModel

from ...settings import DEFAULTS, Settings
from .base import Model, ModelIdentity, identity_for
from .cache import ModelCache
from .classifier import ImageClassifier
from .detector import YoloDetector
from .embedder import ClipEmbedder
from .referee import VisionLanguageReferee
from .remote import ModelServiceClient, model_ref, remote_model
from .taxonomy import TaxonClassifier, is_taxonomic
from .wire import ModelRef


class ModelSet(BaseModel):
    """One role's models: where and how they compute, and what they are. Building one loads nothing."""

    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 16
    offline: bool = False
    model_cache: str = ""  # a folder laid out as the libraries' caches (see cache.py); "" = theirs

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

    def remote_models(self, client: ModelServiceClient) -> dict[str, Model]:
        """The same models as clients of the model service `client` reaches (which must hold them)."""
        identities = self.identities()
        return {role: remote_model(client, ref, identities[role]) for role, ref in self.refs().items()}


class DetectorModels(ModelSet):
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
    def version(self) -> str:
        """What shapes the boxes (vision/reuse.py): the model and the settings that filter its answers."""
        from ..reuse import version_of  # here: reuse reads the results store, which the model service never needs

        return version_of(self.identity, self.confidence, self.max_detections, self.image_size)

    @property
    def identity(self) -> str:
        return str(self._identity(self.model, self.revision))


class EmbedderModels(ModelSet):
    """The generalist: OpenCLIP (architecture + pretrained tag, `hf-hub:org/repo`, or `local-dir:/path`)."""

    model: str = DEFAULTS.clip_model
    pretrained: str = DEFAULTS.clip_pretrained
    batch_size: int = DEFAULTS.clip_batch_size

    def identities(self) -> dict[str, ModelIdentity]:
        return {"embedder": self._identity(self.model)}

    def _build_local(self, runtime: dict) -> dict[str, Model]:
        return {"embedder": ClipEmbedder(self._identity(self.model), **runtime, pretrained=self.pretrained)}

    @property
    def identity(self) -> str:
        identity = str(self._identity(self.model))
        return f"{identity}/{self.pretrained}" if self.pretrained else identity


class SpecialistModels(ModelSet):
    """The experts, by name: a transformers image classifier each (hub id or local `save_pretrained` folder), or a
    taxonomic OpenCLIP expert (`hf-hub:imageomics/bioclip`, see taxonomy.py)."""

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

    @property
    def identity(self) -> str:
        return ",".join(f"{name}={self._identity(model_id)}" for name, model_id in sorted(self.models.items()))


class RefereeModels(ModelSet):
    """The referee: a small vision-language model answering closed questions about doubtful crops (see
    vision/committee/referee.py); none where `model` is empty."""

    model: str = DEFAULTS.referee_model
    revision: str = ""
    batch_size: int = DEFAULTS.referee_batch_size

    def identities(self) -> dict[str, ModelIdentity]:
        return {"referee": self._identity(self.model, self.revision)} if self.model else {}

    def _build_local(self, runtime: dict) -> dict[str, Model]:
        if not self.model:
            return {}
        return {"referee": VisionLanguageReferee(self._identity(self.model, self.revision), **runtime)}

    @property
    def identity(self) -> str:
        return str(self._identity(self.model, self.revision)) if self.model else ""


def committee_models(settings: Settings) -> dict[str, ModelSet]:
    """Every role's models as the settings describe them (for runs, the search service and the model service)."""
    runtime = {"device": settings.device, "precision": settings.precision, "offline": bool(settings.offline_models),
               "model_cache": settings.model_cache}
    return {
        "detector": DetectorModels(
            model=settings.detector_model, confidence=settings.detector_confidence,
            max_detections=settings.detector_max_detections, image_size=settings.detector_image_size,
            batch_size=settings.detector_batch_size, **runtime,
        ),
        "embedder": EmbedderModels(model=settings.clip_model, pretrained=settings.clip_pretrained,
                                   batch_size=settings.clip_batch_size, **runtime),
        "specialists": SpecialistModels(
            models=settings.specialist_models, top_k=settings.specialist_top_k, drop_labels=sorted(settings.drop_labels),
            batch_size=settings.specialist_batch_size, **runtime,
        ),
        "referee": RefereeModels(model=settings.referee_model, batch_size=settings.referee_batch_size, **runtime),
    }
