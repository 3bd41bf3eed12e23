from .image_store import ImageStore, LocalImageStore, S3ImageStore
from .policies import IngestPolicy, UploadPolicy

__all__ = ["ImageStore", "LocalImageStore", "S3ImageStore", "IngestPolicy", "UploadPolicy"]
