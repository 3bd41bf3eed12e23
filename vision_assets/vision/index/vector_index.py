"""The vector index in Qdrant: two collections (`images`, `crops`), deterministic point ids so a re-run overwrites
instead of duplicating, payloads people filter on, and the consistency question "does the index hold exactly
what this image should have?"."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..chunking import POINT_LOOKUP, chunked
from . import qdrant_models as models
from .client import IndexClient
from .edge import EdgeClient
from .server_layout import ServerLayout

# Fixed forever: changing it would orphan every point ever written.
POINT_NAMESPACE = uuid.UUID("6f1c2a7e-3b4d-5e6f-8a9b-0c1d2e3f4a5b")
IMAGES = "images"
CROPS = "crops"
KEYWORD_FIELDS = ("image_id", "batch", "entity", "label", "labels", "specialist", "sha256", "embedding_model", "scene_tags",
                  "camera", "label_source", "caption_words")
FLOAT_FIELDS = ("confidence", "label_confidence")
BOOL_FIELDS = ("needs_review", "clip_disagrees", "reviewed")
DATETIME_FIELDS = ("taken_at",)
GEO_FIELDS = ("location",)
# By qdrant-client's `PayloadSchemaType` values (made members where used: this module imports no qdrant-client).
PAYLOAD_INDEXES = (("keyword", KEYWORD_FIELDS), ("float", FLOAT_FIELDS), ("bool", BOOL_FIELDS),
                   ("datetime", DATETIME_FIELDS), ("geo", GEO_FIELDS))


def image_point_id(partition_key: str) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"image:{partition_key}"))


def crop_point_id(partition_key: str, detection_index: int) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"crop:{partition_key}:{detection_index}"))


class IndexMismatch(RuntimeError):
    """The collection exists with a different dimension or embedding model: mixing vectors would be wrong."""


@dataclass
class ImagePoints:
    """Everything one image contributes to the index."""

    partition_key: str
    image_vector: np.ndarray
    image_payload: dict[str, Any]
    crop_vectors: np.ndarray  # (n_crops, dim)
    crop_payloads: list[dict[str, Any]] = field(default_factory=list)
    crop_indexes: list[int] = field(default_factory=list)
    # Crop points an earlier run may have left for this image (what it recorded, and one per detection): the ids
    # that are looked up and removed, so that no call filters the whole collection by image id.
    earlier_crop_ids: list[str] = field(default_factory=list)

    @property
    def crop_ids(self) -> list[str]:
        return [crop_point_id(self.partition_key, i) for i in self.crop_indexes]

    @property
    def stale_crop_ids(self) -> list[str]:
        keep = set(self.crop_ids)
        return [point_id for point_id in dict.fromkeys(self.earlier_crop_ids) if point_id not in keep]


class VectorIndex:
    def __init__(self, client: IndexClient, collection_prefix: str = "", layout: ServerLayout = ServerLayout()):
        self.client = client
        self.images = f"{collection_prefix}{IMAGES}"
        self.crops = f"{collection_prefix}{CROPS}"
        self.layout = layout  # a server's: embedded Qdrant (Edge) is one shard in one folder and takes none of it

    @property
    def embedded(self) -> bool:
        return isinstance(self.client, EdgeClient)

    @property
    def read_consistency(self) -> int | models.ReadConsistencyType | None:
        """What a search asks of a server's replicas; None for the embedded index (one copy)."""
        return None if self.embedded else self.layout.consistency()

    def ensure_collections(self, dimension: int, embedding_model: str) -> None:
        for name in (self.images, self.crops):
            if self.client.collection_exists(name):
                self._verify(name, dimension, embedding_model)
                self._add_missing_indexes(name)
                continue
            metadata = {"embedding_model": embedding_model, "dimension": dimension}
            if self.embedded:
                self.client.create_collection(
                    name, vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE),
                    metadata=metadata)
            else:
                self.client.create_collection(name, metadata=metadata, **self.layout.collection_settings(dimension))
            self._add_missing_indexes(name)

    def _add_missing_indexes(self, name: str) -> None:
        """Every payload index this version filters on; a collection made by an older version gains the new ones
        (Qdrant builds an index over the points already there)."""
        existing = self.client.get_collection(name).payload_schema or {}
        for schema, fields in PAYLOAD_INDEXES:
            for field_name in fields:
                if field_name not in existing:
                    self.client.create_payload_index(name, field_name, models.PayloadSchemaType(schema))

    def _verify(self, name: str, dimension: int, embedding_model: str) -> None:
        info = self.client.get_collection(name)
        size = info.config.params.vectors.size
        built_with = (info.config.metadata or {}).get("embedding_model")
        if size != dimension or (built_with and built_with != embedding_model):
            raise IndexMismatch(
                f"collection {name!r} holds {size}-d vectors from {built_with or 'an unknown model'}, but this run embeds "
                f"{dimension}-d vectors with {embedding_model}. Use a new VISION_ASSETS_QDRANT_COLLECTION_PREFIX (or "
                "delete the collection) and backfill, so the index never mixes vector spaces."
            )

    def upsert(self, images: Sequence[ImagePoints], batch_size: int = 256) -> None:
        """Write every image and crop point, and remove the crop points an earlier run left for these images that
        this one does not write (a re-run that finds fewer objects must not leave stale crops behind). By point id,
        in one call for all the images: a filter on the image id would scan the collection in embedded Qdrant,
        whose cost grows with the catalogue."""
        if not images:
            return
        stale = [point_id for image in images for point_id in image.stale_crop_ids]
        if stale:
            self.client.delete(self.crops, points_selector=models.PointIdsList(points=stale), wait=True)
        image_points = [
            models.PointStruct(id=image_point_id(i.partition_key), vector=i.image_vector.tolist(), payload=i.image_payload)
            for i in images
        ]
        crop_points = [
            models.PointStruct(id=point_id, vector=vector.tolist(), payload=payload)
            for i in images
            for point_id, vector, payload in zip(i.crop_ids, i.crop_vectors, i.crop_payloads, strict=True)
        ]
        for collection, points in ((self.images, image_points), (self.crops, crop_points)):
            for chunk in chunked(points, batch_size):
                self.client.upsert(collection, points=list(chunk), wait=True)

    def delete_points(self, partition_keys: Sequence[str], crop_ids: Sequence[str]) -> None:
        """Remove these images' points, by id: their image point and the given crop points."""
        if not partition_keys:
            return
        for collection, ids in ((self.images, [image_point_id(k) for k in partition_keys]), (self.crops, crop_ids)):
            if ids and self.client.collection_exists(collection):
                self.client.delete(collection, points_selector=models.PointIdsList(points=list(ids)), wait=True)

    def delete_image(self, partition_key: str) -> None:
        selector = models.FilterSelector(filter=models.Filter(must=[_is(partition_key)]))
        for collection in (self.images, self.crops):
            if self.client.collection_exists(collection):
                self.client.delete(collection, points_selector=selector, wait=True)

    def consistency_problems(self, images: Sequence[ImagePoints]) -> dict[str, list[str]]:
        """Per image, why the index does not hold exactly its points (an empty list when it does): its image point,
        every crop point it wrote, and none of the crop points an earlier run may have left. Looked up by id, in
        one call per collection for all the images."""
        image_found = self.present(self.images, [image_point_id(image.partition_key) for image in images])
        crop_found = self.present(self.crops, [p for image in images for p in image.crop_ids + image.stale_crop_ids])
        problems: dict[str, list[str]] = {}
        for image in images:
            found = []
            if image_point_id(image.partition_key) not in image_found:
                found.append("images collection has 0 point(s) for this image, expected 1")
            if missing := [p for p in image.crop_ids if p not in crop_found]:
                found.append(f"{len(missing)} crop point(s) missing")
            if stray := [p for p in image.stale_crop_ids if p in crop_found]:
                found.append(f"{len(stray)} stray crop point(s) carry this image id")
            problems[image.partition_key] = found
        return problems

    def unindexed(self) -> dict[str, int]:
        """Embedded (Qdrant Edge) only: per collection, the points not in an HNSW graph yet. A server builds its
        graphs itself, in the background: {}."""
        if not self.embedded:
            return {}
        return {name: self.client.unindexed(name) for name in (self.images, self.crops)
                if self.client.collection_exists(name)}

    def unmerged(self) -> int:
        """Embedded only: sealed shards waiting to be merged (edge_shards.py), in all collections."""
        if not self.embedded:
            return 0
        return sum(self.client.unmerged(name) for name in (self.images, self.crops)
                   if self.client.collection_exists(name))

    def build_graph(self, at_least: int = 1, tell: Callable[[str], None] = lambda _: None) -> dict[str, float]:
        """Embedded only: put every collection's points that are not in an HNSW graph yet into one (a segment of
        their own, see edge.py), where at least `at_least` wait; seconds taken per collection built."""
        built = {}
        for name, waiting in self.unindexed().items():
            if waiting >= at_least:
                built[name] = self.client.build_hnsw(name)
                tell(f"{name}: {waiting:,} points put into its HNSW graph in {built[name]:.1f} s")
        return built

    def present(self, collection: str, point_ids: Sequence[str]) -> set[str]:
        """Which of these point ids the collection holds, looked up by id (no filter over the collection)."""
        found: set[str] = set()
        for chunk in chunked(point_ids, POINT_LOOKUP):
            points = self.client.retrieve(collection, list(chunk), with_payload=False, with_vectors=False)
            found.update(str(point.id) for point in points)
        return found


def _is(partition_key: str) -> models.FieldCondition:
    return models.FieldCondition(key="image_id", match=models.MatchValue(value=partition_key))
