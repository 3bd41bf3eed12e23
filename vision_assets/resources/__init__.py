from .image_store import ImageStore, LocalImageStore, S3ImageStore
from .models import DetectorResource, EmbedderResource, SpecialistsResource
from .policies import CatalogSettings, IngestPolicy, LabelingSettings, UploadPolicy
from .vector_index import QdrantResource

__all__ = [
    "CatalogSettings",
    "DetectorResource",
    "EmbedderResource",
    "ImageStore",
    "IngestPolicy",
    "LabelingSettings",
    "LocalImageStore",
    "QdrantResource",
    "S3ImageStore",
    "SpecialistsResource",
    "UploadPolicy",
]
