"""Every asset key, in one place (modules import them from here, never spell them)."""

import dagster as dg

SOURCE_IMAGES = dg.AssetKey("source_images")
DETECTIONS = dg.AssetKey("detections")
EMBEDDINGS = dg.AssetKey("embeddings")
SPECIALIST_LABELS = dg.AssetKey("specialist_labels")
REFEREE_OPINIONS = dg.AssetKey("referee_opinions")
QDRANT_INDEX = dg.AssetKey("qdrant_index")
IMAGE_CATALOG = dg.AssetKey("image_catalog")
REVIEW_DECISIONS = dg.AssetKey("review_decisions")
REVIEW_QUEUE = dg.AssetKey("review_queue")
REVIEW_ACCURACY = dg.AssetKey("review_accuracy")

# The pool the model stages share (`vision-assets dev` gives it a slot per run in flight).
GPU_POOL = "gpu"

# The per-batch stages, in pipeline order.
PIPELINE_STAGES = [SOURCE_IMAGES, DETECTIONS, EMBEDDINGS, SPECIALIST_LABELS, REFEREE_OPINIONS, QDRANT_INDEX]
