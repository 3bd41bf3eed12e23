"""Finding things again: text ("dogs running on a beach"), an image file, or an indexed image ("more like this"),
over whole images or crops, with filters on what the committee said. Queries are embedded with the same model that
built the index, and refused when it is a different one: vectors from two models are not comparable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image

from . import qdrant_models as models
from .payloads import caption_words
from .vector_index import VectorIndex, image_point_id

Target = Literal["images", "crops"]


class SearchError(RuntimeError):
    """A query that cannot be answered honestly; the message says why and what to do."""


class UnknownImage(SearchError):
    """"More like" an image the index does not hold."""


class NothingIndexed(SearchError):
    """The collection is missing or empty: nothing has been indexed yet."""


@dataclass(frozen=True)
class Place:
    """A circle on the map: photos whose EXIF position lies within `radius_m` metres of the centre."""

    latitude: float
    longitude: float
    radius_m: float

    @classmethod
    def parse(cls, text: str) -> Place:
        """`52.37,4.89,5km` (or `...,500m`, or plain metres)."""
        try:
            latitude, longitude, radius = (part.strip() for part in text.split(","))
            metres = float(radius[:-2]) * 1000 if radius.endswith("km") else float(radius.removesuffix("m"))
            place = cls(float(latitude), float(longitude), metres)
        except ValueError as error:
            raise SearchError(f"a place is LAT,LON,RADIUS such as 52.37,4.89,5km, not {text!r}") from error
        if not (-90 <= place.latitude <= 90 and -180 <= place.longitude <= 180 and place.radius_m > 0):
            raise SearchError(f"{text!r} is off the map or has no radius")
        return place


@dataclass(frozen=True)
class SearchFilters:
    entity: str | None = None  # detector class: "dog", "person"
    label: str | None = None  # an expert's label: "golden retriever", "bald eagle"
    coral_health: str | None = None  # images only
    min_confidence: float | None = None  # crops only: the expert's top-label confidence
    needs_review: bool | None = None
    scene: str | None = None  # images only: a scene tag ("beach")
    clip_disagrees: bool | None = None  # CLIP's second opinion contradicts the detector or the expert
    taken_after: datetime | None = None  # EXIF capture time, inclusive; a naive time is read as UTC
    taken_before: datetime | None = None
    near: Place | None = None  # EXIF GPS position within a radius
    camera: str | None = None  # "Apple iPhone 15 Pro"
    reviewed: bool | None = None  # a person decided it (crops), or decided something in it (images)

    def to_qdrant(self, target: Target) -> models.Filter | None:
        must: list[models.Condition] = []
        if self.taken_after or self.taken_before:
            must.append(models.FieldCondition(key="taken_at", range=models.DatetimeRange(
                gte=self.taken_after, lte=self.taken_before)))
        if self.near:
            must.append(models.FieldCondition(key="location", geo_radius=models.GeoRadius(
                center=models.GeoPoint(lat=self.near.latitude, lon=self.near.longitude), radius=self.near.radius_m)))
        if self.camera:
            must.append(_match("camera", self.camera))
        if self.reviewed is not None:
            must.append(_match("reviewed", self.reviewed))
        if self.entity:
            must.append(_match("entity", self.entity))
        if self.label:
            must.append(_match("labels", self.label))
        if self.coral_health:
            if target != "images":
                raise SearchError("coral health is a whole-image label: search images, not crops")
            must.append(_match("coral_health", self.coral_health))
        if self.min_confidence is not None:
            if target != "crops":
                raise SearchError("a minimum label confidence applies to crops (one label each): search crops")
            must.append(models.FieldCondition(key="label_confidence", range=models.Range(gte=self.min_confidence)))
        if self.needs_review is not None:
            must.append(_match("needs_review", self.needs_review))
        if self.scene:
            if target != "images":
                raise SearchError("scene tags describe whole images: search images, not crops")
            must.append(_match("scene_tags", self.scene))
        if self.clip_disagrees is not None:
            must.append(_match("clip_disagrees", self.clip_disagrees))
        return models.Filter(must=must) if must else None


@dataclass
class SearchHit:
    image_id: str
    source_uri: str
    score: float
    kind: str  # "image" or "crop"
    entity: str | list[str] | None = None
    box: list[float] | None = None
    labels: list[dict[str, Any]] = field(default_factory=list)
    needs_review: bool = False
    review_reasons: list[str] = field(default_factory=list)
    scene_tags: list[str] = field(default_factory=list)
    taken_at: str | None = None
    location: dict[str, float] | None = None
    reviewed_by: str | None = None  # the person whose answer this is
    caption: str | None = None  # images: what the referee's model saw in it
    matched_caption: bool = False  # found by the words of its caption (besides its meaning)
    batch: str | None = None  # the upload batch (Dagster partition) the image came in
    label_source: str | None = None  # crops: whose label it is: "expert", "detector", "referee" or "person"
    referee: str | None = None  # crops the referee judged: what it said ("referee: beagle 0.91 (next: ...)")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        where = f" box {[round(v) for v in self.box]}" if self.box else ""
        what = ", ".join(f"{label['name']} {label['confidence']:.2f}" for label in self.labels) or "no expert label"
        flag = f"  [needs review: {'; '.join(self.review_reasons)}]" if self.review_reasons else (
            "  [needs review]" if self.needs_review else "")
        if self.reviewed_by:
            flag += f"  [reviewed by {self.reviewed_by}]"
        elif self.label_source == "referee":
            flag += f"  [settled by the {self.referee}]"
        entity = self.entity if isinstance(self.entity, str) else ", ".join(self.entity or []) or "-"
        scene = f"  scene: {', '.join(self.scene_tags)}" if self.scene_tags else ""
        scene += f"  \"{self.caption}\"" + (" (caption matched)" if self.matched_caption else "") if self.caption \
            else ""
        taken = f"  taken {self.taken_at}" if self.taken_at else ""
        place = f" at {self.location['lat']:.5f},{self.location['lon']:.5f}" if self.location else ""
        return (f"{self.score:6.3f}  {self.image_id}{where}  ({entity}: {what}){scene}{flag}\n        {self.source_uri}"
                f"{taken}{place}")


class Embeds(Protocol):
    """What search needs of the CLIP embedder."""

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...


class Searcher:
    def __init__(self, index: VectorIndex, embedder: Embeds, embedding_model: str):
        self.index = index
        self.embedder = embedder
        self.embedding_model = embedding_model

    def by_text(self, text: str, target: Target = "images", filters: SearchFilters = SearchFilters(),
                limit: int = 10, offset: int = 0) -> list[SearchHit]:
        """CLIP's meaning, and, for images, the words of their captions: the images whose caption has every word of
        the query come first (most similar first, at most CAPTION_MATCHES), then the rest by similarity; pages run
        over that one order."""
        self._ready(target)
        vector = self.embedder.embed_texts([text])[0]
        words = caption_words(text)
        if target != "images" or not words:
            return self._query(vector, target, filters, limit, offset)
        captioned = self._query(vector, target, filters, CAPTION_MATCHES, 0,
                                also=[_match("caption_words", word) for word in words])
        for hit in captioned:
            hit.matched_caption = True
        page = captioned[offset:offset + limit]
        rest = limit - len(page)
        if rest <= 0:
            return page
        others = models.HasIdCondition(has_id=[image_point_id(hit.image_id) for hit in captioned]) if captioned else None
        shown = {hit.image_id for hit in captioned}
        return page + [hit for hit in self._query(vector, target, filters, rest, max(0, offset - len(captioned)),
                                                  exclude=others) if hit.image_id not in shown]

    def by_image(self, image: Image.Image, target: Target = "images", **options: Any) -> list[SearchHit]:
        self._ready(target)
        return self._query(self.embedder.embed_images([image.convert("RGB")])[0], target, **options)

    def like(self, image_id: str, target: Target = "images", **options: Any) -> list[SearchHit]:
        """More like an indexed image: its stored vector is the query; the image itself is left out."""
        self._ready("images")
        found = self.index.client.retrieve(self.index.images, [image_point_id(image_id)], with_vectors=True)
        if not found:
            raise UnknownImage(f"no indexed image {image_id!r}: is it processed, and is the id its partition key?")
        exclude = models.HasIdCondition(has_id=[image_point_id(image_id)]) if target == "images" else None
        return self._query(np.asarray(found[0].vector, np.float32), target, exclude=exclude, **options)

    def _collection(self, target: Target) -> str:
        return self.index.images if target == "images" else self.index.crops

    def _ready(self, target: Target) -> None:
        name = self._collection(target)
        if not self.index.client.collection_exists(name):
            raise NothingIndexed(f"collection {name!r} does not exist: nothing has been indexed yet (run the pipeline)")
        info = self.index.client.get_collection(name)
        built_with = (info.config.metadata or {}).get("embedding_model")
        if built_with and built_with != self.embedding_model:
            raise SearchError(f"collection {name!r} was built with {built_with}, but queries would be embedded with "
                              f"{self.embedding_model}: set the same CLIP model as the index, or re-index")
        if not info.points_count:
            raise NothingIndexed(f"collection {name!r} is empty: nothing has been indexed yet")

    def _query(self, vector: np.ndarray, target: Target, filters: SearchFilters = SearchFilters(), limit: int = 10,
               offset: int = 0, exclude: models.Condition | None = None, also: Sequence[models.Condition] = (),
               ) -> list[SearchHit]:
        """`also`: conditions every hit must meet besides the filters (a caption's words)."""
        query_filter = filters.to_qdrant(target)
        if also:
            query_filter = query_filter or models.Filter()
            query_filter.must = [*(query_filter.must or []), *also]
        if exclude is not None:
            query_filter = query_filter or models.Filter()
            query_filter.must_not = [exclude]
        points = self.index.client.query_points(
            self._collection(target), query=vector.tolist(), query_filter=query_filter, limit=limit, offset=offset,
            with_payload=True, consistency=self.index.read_consistency,
        ).points
        return [hit_from_point(point, target) for point in points]


CAPTION_MATCHES = 100  # images found by their caption's words, ahead of the rest


def _match(key: str, value: str | bool) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def hit_from_point(point: Any, target: Target) -> SearchHit:
    """A point of the index (scored by a query, or scrolled: score 0) as a search hit."""
    payload = point.payload or {}
    labels = payload.get("top_k" if target == "crops" else "top_labels", [])
    if target == "crops" and payload.get("label_source") in ("referee", "person") and payload.get("label"):
        chosen = {"name": payload["label"], "confidence": payload.get("label_confidence", 1.0),
                  "source": payload["label_source"]}
        labels = [chosen, *(label for label in labels if label.get("name") != chosen["name"])]
    return SearchHit(
        image_id=payload.get("image_id", ""),
        source_uri=payload.get("source_uri", ""),
        score=round(float(getattr(point, "score", None) or 0.0), 6),
        kind="crop" if target == "crops" else "image",
        entity=payload.get("entity"),
        box=payload.get("box") if target == "crops" else None,
        labels=labels,
        needs_review=bool(payload.get("needs_review")),
        review_reasons=list(payload.get("review_reasons") or []),
        scene_tags=list(payload.get("scene_tags") or []),
        taken_at=payload.get("taken_at"),
        location=payload.get("location"),
        reviewed_by=(payload.get("review") or {}).get("reviewer") if payload.get("reviewed") else None,
        batch=payload.get("batch"),
        label_source=payload.get("label_source"),
        caption=payload.get("caption"),
        referee=(payload.get("referee") or {}).get("said"),
    )
