from .image_store import ImageStore, LocalImageStore, S3ImageStore
from .models import DetectorResource, EmbedderResource, RefereeResource, SpecialistsResource
from .policies import (
    CallbackSettings,
    CatalogSettings,
    FailedImageRetries,
    ImageSelection,
    IngestPolicy,
    LabelingSettings,
    ReviewSettings,
    StagePolicy,
    UploadPolicy,
)
from .s3_connection import S3Connection
from .vector_index import QdrantResource

__all__ = [
    "CallbackSettings",
    "CatalogSettings",
    "DetectorResource",
    "EmbedderResource",
    "FailedImageRetries",
    "ImageSelection",
    "ImageStore",
    "IngestPolicy",
    "LabelingSettings",
    "LocalImageStore",
    "QdrantResource",
    "RefereeResource",
    "ReviewSettings",
    "S3Connection",
    "S3ImageStore",
    "SpecialistsResource",
    "StagePolicy",
    "UploadPolicy",
]
