"""The one partitions definition: every uploaded object is one partition of `images`."""

import dagster as dg

from .vision.partition_keys import partition_key_for

images = dg.DynamicPartitionsDefinition(name="images")

__all__ = ["images", "partition_key_for"]
