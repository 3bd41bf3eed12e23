"""`delete_images`: the documented way to remove images (points, results, partition, object)."""

import dagster as dg

from ..partitions import images
from ..resources import ImageStore, QdrantResource
from ..vision.deletion import delete_image
from ..vision.storage.registrations import Registrations


class DeleteImagesConfig(dg.Config):
    partition_keys: list[str]
    delete_objects: bool = True  # False when the objects are already gone (the sensor's case)


@dg.op(description="Removes each image's points from both collections, its results, its partition and, unless "
       "told otherwise, its object in the bucket (so the upload sensor does not bring it back).", pool="qdrant")
def delete_images_op(context: dg.OpExecutionContext, config: DeleteImagesConfig, image_store: ImageStore,
                     qdrant: QdrantResource) -> None:
    existing = set(context.instance.get_dynamic_partitions(images.name))
    registrations = Registrations(image_store.results)
    with qdrant.open() as index:
        for key in config.partition_keys:
            deleted = delete_image(key, image_store.results, index, image_store.objects, config.delete_objects,
                                   registrations)
            if key in existing:
                context.instance.delete_dynamic_partition(images.name, key)
            context.log.info(f"deleted {key}: points, {deleted.result_files} result files"
                             + (", the object" if deleted.object_deleted else ""))


@dg.job(description="Delete images: launch with `ops: {delete_images_op: {config: {partition_keys: [...]}}}` or "
        "`vision-assets delete KEY ...`. Deleting an object from the bucket does the same by itself.")
def delete_images():
    delete_images_op()


def delete_run_config(partition_keys: list[str], delete_objects: bool) -> dict:
    return {"ops": {"delete_images_op": {"config": {"partition_keys": partition_keys, "delete_objects": delete_objects}}}}
