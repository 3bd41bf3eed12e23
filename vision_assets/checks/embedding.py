"""Are the stored vectors usable for search? (ERROR: an image with bad vectors is not indexed.)"""

import dagster as dg

from ..vision.records import EmbeddingsRecord
from .per_image import ImageOutcome, PerImageCheck

EMBEDDINGS_KEY = dg.AssetKey("embeddings")


def embedding_outcome(record: EmbeddingsRecord) -> ImageOutcome:
    return ImageOutcome(
        record.partition_key,
        passed=not record.problems,
        description="; ".join(record.problems) or f"{1 + len(record.crop_indexes)} vectors, {record.dimension}-d, unit norm",
        metadata={"dimension": record.dimension, "crops": len(record.crop_indexes), "model": record.model},
    )


embedding_validity = PerImageCheck(
    asset=EMBEDDINGS_KEY,
    name="embedding_valid",
    batch_name="embeddings_valid",
    severity=dg.AssetCheckSeverity.ERROR,
    description="Image and crop embeddings have the model's dimension, are finite and unit length.",
    not_passed="failed",
)
