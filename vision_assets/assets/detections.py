"""`detections`: the router (YOLO) on every valid image of the batch."""

import functools
import time
from collections import Counter

import dagster as dg

from ..keys import DETECTIONS, GPU_POOL, SOURCE_IMAGES
from ..resources import DetectorResource, ImageSelection, ImageStore, StagePolicy
from ..vision.images.working import WorkingPicture, scale_for_long_side
from ..vision.models.device_time import DeviceTime, batch_device_seconds
from ..vision.models.failures import ModelFailure, answer_each
from ..vision.records import DetectionsRecord, SourceImageRecord
from ..vision.reuse import donor_for, remember_bytes, reusable
from ..vision.storage.overlap import BackgroundWrites
from ..vision.storage.results_store import DETECTIONS as DETECTIONS_FILE
from .stage import (
    BatchMetadata,
    batch_counts,
    read_ahead,
    reused_in,
    run_images,
    stage_asset,
    step_start,
    transient_faults_retried,
)


def build_detections(detector_identity: str) -> dg.AssetsDefinition:
    @dg.asset(
        **stage_asset(
            key=DETECTIONS,
            deps=[SOURCE_IMAGES],
            pool=GPU_POOL,
            kinds={"pytorch"},
            code_version=f"1|{detector_identity}",
            description=f"Objects and boxes found by the router ({detector_identity}), per valid image of the batch. "
            "Writes `~detections.json`.",
        )
    )
    @transient_faults_retried
    def detections(context: dg.AssetExecutionContext, image_store: ImageStore, detector: DetectorResource,
                   stage_policy: StagePolicy, image_selection: ImageSelection):
        results = image_store.results
        taken = run_images(context, results, image_selection)
        model, seconds, classes, failed, detected = detector.identity, 0.0, Counter(), {}, 0
        progress, resumed, done, skipped, todo = step_start(context, results, taken, "detections")
        clock, reused = DeviceTime(), set()
        side = functools.cache(lambda: detector.detector.input_side)  # asked once a picture needs the model
        version = detector.version

        def read_picture(image: str, source: SourceImageRecord, _) -> WorkingPicture | DetectionsRecord:
            # The same bytes detected before with this detector: its boxes, no picture, no model.
            if copy := reusable(results, donor_for(results, source), DETECTIONS_FILE, DetectionsRecord, version, image):
                return copy
            # Decoded only as large as the detector's letterbox: a 4,000 px working copy at 1/4 of its size.
            return results.read_working(image, scale_for_long_side(source.working_size, side()), source)

        with BackgroundWrites() as writes:
            for chunk in read_ahead(results, taken, todo, stage_policy.chunk_size, read_picture):
                skipped |= chunk.skipped
                copies = [r for r in chunk.inputs.values() if isinstance(r, DetectionsRecord)]
                reused |= {r.partition_key for r in copies}
                pictures = {k: p for k, p in chunk.inputs.items() if not isinstance(p, DetectionsRecord)}
                keys = list(pictures)
                if not keys:  # none of these goes further, or no model is needed for them
                    done |= {r.partition_key for r in copies}
                    writes.submit([functools.partial(results.write, r.partition_key, DETECTIONS_FILE, r)
                                   for r in copies], then=progress.after_writing([*chunk.inputs, *chunk.skipped]))
                    continue
                started = time.perf_counter()
                found = clock.timed("detector", detector.detector, keys, answer_each, detector.detector.detect,
                                    [pictures[k].image for k in keys])
                seconds += time.perf_counter() - started
                records = []
                for key, boxes in zip(keys, found, strict=True):
                    picture = pictures[key]
                    if isinstance(boxes, ModelFailure):  # this image alone: `embeddings_valid` shows it with the error
                        failed[key] = boxes.error
                        boxes = []
                    for box in boxes:
                        box.box = picture.to_working(box.box)
                    records.append(DetectionsRecord(partition_key=key, model=model, width=picture.width,
                                                    height=picture.height, detections=boxes, error=failed.get(key),
                                                    device_seconds=clock.of(key), version=version))
                    classes.update(b.class_name for b in boxes)
                done |= set(chunk.inputs)
                detected += len(keys)
                remembered = [functools.partial(remember_bytes, results, chunk.sources[r.partition_key])
                              for r in records if not r.error]
                writes.submit([functools.partial(results.write, r.partition_key, DETECTIONS_FILE, r)
                               for r in [*records, *copies]] + remembered,
                              then=progress.after_writing([*chunk.inputs, *chunk.skipped]))
        if failed:
            context.log.warning(f"the detector failed on {len(failed)} image(s), the rest of the batch goes on: "
                                f"{dict(list(failed.items())[:5])}")
        rate = f"{detected / seconds:.1f} images/s" if seconds else "no images"
        context.log.info(f"detected {sum(classes.values())} objects in {detected} images in {seconds:.2f}s ({rate}) "
                         f"on {detector.detector.device if detected else 'no device'}; {len(skipped)} skipped"
                         + (f"; {len(resumed)} finished by an earlier attempt of this step" if resumed else ""))
        metadata = BatchMetadata(context)
        run_figures = {"model": model, "run_objects": sum(classes.values()), "run_classes": dict(classes.most_common(20)),
                       "run_images_per_second": round(detected / seconds, 2) if seconds else 0.0,
                       "run_images_failed": len(failed), "run_images_resumed": len(resumed)}
        spent = batch_device_seconds(clock.by_image.items(), taken.batch_of)
        for batch, counts in batch_counts(taken, done, skipped).items():
            metadata.add(batch, counts | run_figures | {"device_seconds": spent.get(batch, {}),
                                                        "images_reused": reused_in(taken, reused, batch)})
        progress.clear()
        yield metadata.materialize()

    return detections
