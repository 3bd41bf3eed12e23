"""`detections`: the router (YOLO) on every valid image of the batch."""

import time
from collections import Counter

import dagster as dg

from ..checks.validation import SOURCE_IMAGES
from ..resources import DetectorResource, ImageStore, StagePolicy
from ..vision.records import DetectionsRecord
from ..vision.storage.results_store import DETECTIONS
from .stage import load_images, ImageMetadata, stage_asset, transient_faults_retried, valid_sources

DETECTIONS_KEY = dg.AssetKey("detections")


def build_detections(detector_identity: str) -> dg.AssetsDefinition:
    @dg.asset(
        **stage_asset(
            key=DETECTIONS_KEY,
            deps=[SOURCE_IMAGES],
            pool="gpu",
            kinds={"pytorch"},
            code_version=f"1|{detector_identity}",
            description=f"Objects and boxes found by the router ({detector_identity}), per valid image. Writes "
            "`~detections.json`.",
        )
    )
    @transient_faults_retried
    def detections(
        context: dg.AssetExecutionContext, image_store: ImageStore, detector: DetectorResource, stage_policy: StagePolicy
    ):
        valid, skipped = valid_sources(image_store, context.partition_keys)
        metadata = ImageMetadata(context)
        metadata.skipped(skipped)
        keys, model, seconds, objects = list(valid), detector.identity, 0.0, 0
        for chunk in stage_policy.chunks(keys):
            pictures = load_images(image_store, chunk)
            started = time.perf_counter()
            found = detector.detector.detect([pictures[k] for k in chunk])
            seconds += time.perf_counter() - started
            for key, boxes in zip(chunk, found, strict=True):
                picture = pictures[key]
                image_store.results.write(key, DETECTIONS, DetectionsRecord(
                    partition_key=key, model=model, width=picture.width, height=picture.height, detections=boxes))
                metadata.add(key, {
                    "status": "done",
                    "objects": len(boxes),
                    "classes": dict(Counter(b.class_name for b in boxes)),
                    "model": model,
                })
                objects += len(boxes)
        # The batch's figures belong to the run, not to every image: they go in the run's log.
        rate = f"{len(keys) / seconds:.1f} images/s" if seconds else "no images"
        context.log.info(f"detected {objects} objects in {len(keys)} images in {seconds:.2f}s ({rate}) on "
                         f"{detector.detector.device}; {len(skipped)} skipped")
        yield metadata.materialize()

    return detections
