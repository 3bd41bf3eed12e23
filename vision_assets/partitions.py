"""The partitions: every upload batch is one partition of `batches` (what the assets are partitioned by), and every
image ever registered is a key of `images`, a registry no asset is partitioned by (so the UI never lists it): the
upload sensor's memory of what it has seen, in registration order, kept in the Dagster instance's database (which
a team's deployment shares) and read by the sensor through the instance's cached partition list."""

import dagster as dg

from .vision.partition_keys import partition_key_for

batches = dg.DynamicPartitionsDefinition(name="batches")
images = dg.DynamicPartitionsDefinition(name="images")
# The few image ids that are not their object's key (odd keys get a slug and a hash, `~` in the id), kept apart so
# that finding them costs what they are, not a scan of every id (sensors/image_registry.py).
slugged_images = dg.DynamicPartitionsDefinition(name="slugged_images")

image_id_for = partition_key_for

__all__ = ["batches", "images", "image_id_for", "partition_key_for", "slugged_images"]
