"""`delete_images_op`: the documented way to remove images (points, results, registration, batch entry, object)."""

from collections import defaultdict

import dagster as dg

from ..partitions import images, slugged_images
from ..resources import ImageStore, QdrantResource
from ..vision.batches import BatchManifest
from ..vision.deletion import delete_image
from ..vision.storage.batch_lookup import BatchLookup
from ..vision.storage.registrations import Registrations


class DeleteImagesConfig(dg.Config):
    image_ids: list[str]
    delete_objects: bool = True  # False when the objects are already gone (the sensor's case)


@dg.op(description="Removes each image's points from both collections, its results, its registration, its entry "
       "in its batch's manifest and, unless told otherwise, its object in the bucket (so the upload sensor does not "
       "bring it back).", pool="qdrant")
def delete_images_op(context: dg.OpExecutionContext, config: DeleteImagesConfig, image_store: ImageStore,
                     qdrant: QdrantResource) -> None:
    results = image_store.results
    lookup = BatchLookup(results)
    manifests: dict[str, BatchManifest | None] = {}
    from_batch: dict[str, set[str]] = defaultdict(set)
    with qdrant.open() as index:
        for key in config.image_ids:
            batch = lookup.batch_of(key, results.read_source_record(key))
            if batch and batch not in manifests:
                manifests[batch] = results.read_manifest(batch)
            # The object is named by the batch's manifest (or, for a batch made from an older instance, by the
            # image's own registration file).
            registrations = Registrations(results, [manifests[batch]] if batch and manifests[batch] else [])
            deleted = delete_image(key, results, index, image_store.objects, config.delete_objects, registrations)
            if batch:
                from_batch[batch].add(key)
            # Looked up one by one: the registry can hold millions of ids.
            for registry in (images, slugged_images) if "~" in key else (images,):
                if context.instance.has_dynamic_partition(registry.name, key):
                    context.instance.delete_dynamic_partition(registry.name, key)
            context.log.info(f"deleted {key}: points, {deleted.result_files} result files"
                             + (", the object" if deleted.object_deleted else "") + (f"; out of {batch}" if batch else ""))
    for batch, gone in from_batch.items():
        if manifest := manifests.get(batch) or results.read_manifest(batch):
            results.write_manifests([manifest.without(gone)])


def delete_run_config(image_ids: list[str], delete_objects: bool) -> dict:
    return {"ops": {"delete_images_op": {"config": {"image_ids": image_ids, "delete_objects": delete_objects}}}}
